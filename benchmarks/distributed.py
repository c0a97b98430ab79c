"""Conversion and evaluation wall time with 1 and 2 processes (torchrun, gloo), and an ImageNet 8-GPU estimate.

    python benchmarks/distributed.py                 # about 5-10 min on 2 cores, CPU-heavy: run it on a quiet machine
    python benchmarks/distributed.py --worlds 1,2,1x1 --eval-samples 2000 --timesteps 32

The driver starts ``torchrun --standalone --nproc_per_node=N benchmarks/distributed.py --worker``
for each N in ``--worlds``; the CPU cores are split evenly (``torch.set_num_threads(cores // N)``:
on this 2-core machine one process uses 2 threads, two processes 1 each); ``NxT`` sets T threads
per process instead (``1x1``: one process on one core, the yardstick of the 2-thread speed-up).
Every worker decodes a
seeded random subset of CIFAR-10 (calibration: ``--calib-samples`` training images; evaluation:
``--eval-samples`` test images; the archive is class-ordered, so never the first N), builds the
CIFAR-10 example CNN (``examples/cifar10``; its trained checkpoint ``runs/cifar10/ann.pt`` when
present, else the untrained network, said in the output) and times, between barriers:

* the ANN on the evaluation images (the yardstick of the per-image costs below);
* ``snnbridge.convert`` with maxnorm, robustnorm and snn_calibration (light preset), each rank
  calibrating on its shard in batches of ``ceil(128 / N)`` (``snnbridge.distributed.shard``);
* ``snnbridge.accuracy_curve`` of the maxnorm SNN, one sweep to T on each rank's shard of the
  evaluation images, the counts summed over the ranks.

The driver compares the runs: the SNNs' checksums and largest relative threshold difference
against the first run (maxnorm is bit-identical; robustnorm's percentile comes from a random
sample of the union's activations when they outnumber its ``max_samples``, and the ranks draw
another sample than one process; BC's means are summed in another order), and the accuracy
curves of the same maxnorm SNN, which must be equal.

Wall times are rank 0's between two barriers (the slowest rank's). ``distributed.json`` goes to
``--out`` (default ``benchmarks/results``). The ImageNet estimate printed at the end scales the
measured per-image costs, relative to the measured ANN forward, by the MACs of torchvision's
resnet34 at 224x224 over the example CNN's (both counted here with forward hooks), and assumes
a GPU's effective throughput (``--gpu-tmacs``, stated in the output); see ``estimate``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.utils.data import TensorDataset

import snnbridge
from examples.cifar10 import data as cdata
from examples.cifar10 import run as cifar
from snnbridge import distributed

RECIPES = {
    "maxnorm": ["maxnorm"],
    "robustnorm": ["robustnorm"],
    "snn_calibration (light)": [{"snn_calibration": {"preset": "light"}}],
}
EVALUATED = "maxnorm"  # bit-identical for any number of ranks: the evaluations must agree exactly
CALIB_BATCH = 128
EVAL_BATCH = 250


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--worlds", default="1,2,1x1", help="numbers of processes to time, N or NxTHREADS")
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: the example's default)")
    p.add_argument("--checkpoint", default="runs/cifar10/ann.pt", help="trained ANN of examples/cifar10, if present")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--timesteps", type=int, default=32, help="T of the conversions and of the evaluation sweep")
    p.add_argument("--backend", default="torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-tmacs", type=float, default=10.0,
                   help="assumed effective GPU throughput for the estimate, in 10^12 multiply-accumulates per second")
    p.add_argument("--imagenet-calib", type=int, default=1024, help="calibration images of the ImageNet estimate")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--worker", metavar="JSON", default=None, help=argparse.SUPPRESS)  # internal: one torchrun rank
    p.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    return p


# -- counting MACs ---------------------------------------------------------------------------------------------
def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward of one image (Conv2d and Linear layers, from their output shapes)."""
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return total


# -- one rank ------------------------------------------------------------------------------------------------
def timed(fn):
    """``(result, seconds)`` of ``fn()`` between two barriers: the slowest rank's time, on every rank."""
    if distributed.active():
        torch.distributed.barrier()
    t0 = time.perf_counter()
    out = fn()
    if distributed.active():
        torch.distributed.barrier()
    return out, time.perf_counter() - t0


def worker(args) -> None:
    distributed.init_from_environment()
    world = distributed.world_size()
    torch.set_num_threads(args.worker_threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(args.seed)
    if distributed.is_main():  # extract the archive once before the other ranks read it
        cdata.resolve(args.data)
    if distributed.active():
        torch.distributed.barrier()
    t0 = time.perf_counter()
    kind, root = cdata.resolve(args.data)
    train_set, test_set = cdata.open_splits(kind, root)
    x_cal, _ = cdata.to_tensors(cdata.seeded_subset(train_set, args.calib_samples, args.seed + 2))
    x_test, y_test = cdata.to_tensors(cdata.seeded_subset(test_set, args.eval_samples, args.seed + 1))
    decode_s = time.perf_counter() - t0

    ann = cifar.load_factory(cifar.DEFAULT_MODEL)(num_classes=10)
    trained = Path(args.checkpoint).is_file()
    if trained:
        saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        ann.load_state_dict(saved["state_dict"] if "state_dict" in saved else saved)
    ann.eval()
    per_rank = lambda b: -(-b // world)  # noqa: E731
    calib = [x for (x,) in distributed.shard(TensorDataset(cdata.normalize(x_cal)), per_rank(CALIB_BATCH))]
    test = distributed.shard(TensorDataset(cdata.normalize(x_test), y_test), per_rank(EVAL_BATCH))
    # warm-up (lazy imports, plugin loading, first-call allocations), not timed
    snnbridge.convert(ann, ["maxnorm"], calibration=calib[:1], timesteps=2, backend=args.backend, progress=False)

    ann_acc, ann_s = timed(lambda: snnbridge.ann_accuracy(ann, test))
    conversions, snns = {}, {}
    for label, recipe in RECIPES.items():
        snn, seconds = timed(lambda r=recipe: snnbridge.convert(ann, r, calibration=calib, timesteps=args.timesteps,
                                                                backend=args.backend, progress=False,
                                                                seed=args.seed))
        conversions[label] = round(seconds, 3)
        snns[label] = snn
    curve, eval_s = timed(lambda: snnbridge.accuracy_curve(snns[EVALUATED], test, [args.timesteps],
                                                           progress=False))
    result = {
        "ranks": world, "threads_per_rank": torch.get_num_threads(), "trained_ann": trained,
        "decode_seconds": round(decode_s, 2), "ann_seconds": round(ann_s, 3), "ann_accuracy": ann_acc,
        "conversion_seconds": conversions, "evaluation_seconds": round(eval_s, 3),
        "evaluation": {"recipe": EVALUATED, "timesteps": args.timesteps, "samples": curve["samples"],
                       "accuracy_at_T": curve["accuracy"][-1], "curve": curve["curve"]},
        "snn_checksums": {label: distributed.model_checksum(s)[:16] for label, s in snns.items()},
        "thresholds": {label: [float(sp.threshold) if isinstance(sp.threshold, float) else float(sp.threshold.mean())
                               for sp in s.specs.values()] for label, s in snns.items()},
        "calib_batches_per_rank": len(calib), "calib_batch_per_rank": per_rank(CALIB_BATCH),
        "eval_batch_per_rank": per_rank(EVAL_BATCH),
    }
    if distributed.is_main():
        Path(args.worker).write_text(json.dumps(result, indent=2))
    if distributed.launched_by_torchrun() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -- the driver ----------------------------------------------------------------------------------------------
def run_world(spec: str, args, argv: list[str]) -> dict:
    """One torchrun run of ``spec`` ("N" or "NxTHREADS") processes; rank 0's measurements."""
    n, _, threads = spec.partition("x")
    n = int(n)
    threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // n)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(Path(__file__).resolve()), "--worker", str(out), "--worker-threads", str(threads), *argv]
        print(f"  {n} process(es) x {threads} thread(s) ...", flush=True)
        load_before, t0 = _loadavg(), time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        result = json.loads(out.read_text())
        result["launch_to_exit_seconds"] = round(time.perf_counter() - t0, 1)
        result["loadavg_1min"] = {"before": load_before, "after": _loadavg()}  # other jobs on the cores skew times
        return result


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def agreement(runs: dict, first: str) -> dict:
    """Every run against ``first``: same SNN checksums, largest relative threshold difference, same accuracies."""
    base = runs[first]
    out = {}
    for name, r in runs.items():
        if name == first:
            continue
        out[name] = {
            "snn_identical": {k: r["snn_checksums"][k] == v for k, v in base["snn_checksums"].items()},
            "threshold_max_rel_diff": {k: max(abs(a - b) / abs(b) for a, b in zip(r["thresholds"][k], v))
                                       for k, v in base["thresholds"].items()},
            "evaluation_identical": r["evaluation"]["curve"] == base["evaluation"]["curve"]
            and r["ann_accuracy"] == base["ann_accuracy"],
        }
    return out


def estimate(one: dict, args, macs_cnn: int, macs_r34: int) -> dict:
    """ImageNet on 8 GPUs from one process's per-image costs, in units of one measured ANN forward.

    Assumptions (stated in the output): an SNN step and a calibration image cost the same
    multiple of an ANN forward on a GPU as measured here on the CPU; resnet34 costs its MAC
    ratio times the example CNN; a GPU runs ``--gpu-tmacs`` 10^12 MACs/s on these layers; the
    work splits evenly over 8 GPUs (the measured 1 -> 2 process speed-up on this machine says
    the split itself adds little); the reductions (a few hundred numbers per batch) are free.
    """
    ann_per_image = one["ann_seconds"] / one["evaluation"]["samples"]
    eval_per_image_step = one["evaluation_seconds"] / one["evaluation"]["samples"] / args.timesteps
    snn_step_in_anns = eval_per_image_step / ann_per_image
    r34_forward_s = macs_r34 / (args.gpu_tmacs * 1e12)
    gpus, images, T = 8, 50_000, 64
    eval_s = images * T * snn_step_in_anns * r34_forward_s / gpus
    calib = {}
    for label, seconds in one["conversion_seconds"].items():
        per_image_in_anns = seconds / args.calib_samples / ann_per_image
        calib[label] = {"ann_forwards_per_calibration_image": round(per_image_in_anns, 1),
                        "seconds": round(args.imagenet_calib * per_image_in_anns * r34_forward_s / gpus, 2)}
    return {"gpus": gpus, "images": images, "timesteps": T, "gpu_tmacs_assumed": args.gpu_tmacs,
            "macs_example_cnn": macs_cnn, "macs_resnet34_224": macs_r34, "mac_ratio": round(macs_r34 / macs_cnn, 1),
            "snn_step_in_ann_forwards": round(snn_step_in_anns, 2), "resnet34_forward_gpu_ms": r34_forward_s * 1e3,
            "evaluation_seconds": round(eval_s, 1), "calibration_images": args.imagenet_calib,
            "calibration": calib}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    import torchvision

    started = time.perf_counter()
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    print(f"distributed benchmark on {os.cpu_count()} CPU cores: {args.calib_samples} calibration and "
          f"{args.eval_samples} test images of CIFAR-10, T = {args.timesteps}, backend {args.backend}", flush=True)
    runs = {w: run_world(w, args, argv) for w in worlds}
    macs_cnn = count_macs(cifar.load_factory(cifar.DEFAULT_MODEL)(num_classes=10), (3, 32, 32))
    macs_r34 = count_macs(torchvision.models.resnet34(), (3, 224, 224))
    results = {"config": {**vars(args), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "snnbridge": snnbridge.__version__,
                          "loadavg_before": _loadavg()},
               "runs": runs, "seconds": None}
    results["agreement"] = agreement(runs, worlds[0])
    single = "1x1" if "1x1" in runs else "1" if "1" in runs else None
    if single:
        results["imagenet_8gpu_estimate"] = estimate(runs[single], args, macs_cnn, macs_r34)
        results["imagenet_8gpu_estimate"]["measured_on"] = single
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"wrote {out / 'distributed.json'} ({results['seconds']:.0f} s)")
    return results


def format_table(results: dict) -> str:
    runs = results["runs"]
    labels = list(next(iter(runs.values()))["conversion_seconds"])
    lines = [f"\n{'processes x threads':<22}" + "".join(f"{lab:>26}" for lab in labels)
             + f"{'evaluation (T sweep)':>22}{'ANN':>8}"]
    for r in runs.values():
        lines.append(f"{str(r['ranks']) + ' x ' + str(r['threads_per_rank']):<22}"
                     + "".join(f"{r['conversion_seconds'][lab]:>25.2f}s" for lab in labels)
                     + f"{r['evaluation_seconds']:>21.2f}s{r['ann_seconds']:>7.2f}s")
    for name, a in results["agreement"].items():
        lines.append(f"{name} vs {next(iter(runs))}: SNN bit-identical "
                     + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in a["snn_identical"].items())
                     + "; largest relative threshold difference "
                     + ", ".join(f"{k} {v:.1e}" for k, v in a["threshold_max_rel_diff"].items())
                     + f"; evaluation identical: {'yes' if a['evaluation_identical'] else 'NO'}")
    first = next(iter(runs.values()))
    lines.append(f"(SNN {first['evaluation']['recipe']}: {100 * first['evaluation']['accuracy_at_T']:.2f} % at "
                 f"T = {first['evaluation']['timesteps']} on {first['evaluation']['samples']} images; ANN "
                 f"{100 * first['ann_accuracy']:.2f} %; trained ANN: {first['trained_ann']})")
    est = results.get("imagenet_8gpu_estimate")
    if est:
        lines.append(
            f"\nImageNet estimate (per-image costs of the {est['measured_on']} run), {est['gpus']} GPUs: evaluation "
            f"sweep to T = {est['timesteps']} on {est['images']} images ~ {est['evaluation_seconds']:.0f} s; "
            f"calibration on {est['calibration_images']} images: "
            + ", ".join(f"{k} ~ {v['seconds']:.1f} s" for k, v in est["calibration"].items()) + ".")
        lines.append(
            f"  assumptions: resnet34 at 224x224 = {est['macs_resnet34_224'] / 1e9:.2f} GMACs = {est['mac_ratio']}x "
            f"the example CNN ({est['macs_example_cnn'] / 1e6:.1f} MMACs); one SNN step = "
            f"{est['snn_step_in_ann_forwards']} ANN forwards (measured here, assumed on the GPU too); a GPU runs "
            f"{est['gpu_tmacs_assumed']:g} TMAC/s effective (resnet34 forward "
            f"{est['resnet34_forward_gpu_ms']:.2f} ms); "
            "the work splits evenly over the GPUs; data loading not included.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
