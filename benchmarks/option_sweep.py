"""Plugin options side by side on a benchmark network, scored on held-out *training* images.

The evidence behind defaults that the suite's per-method table cannot show (how many FTBC
iterations, which percentile under FTBC, ...). Each variant is converted once per T on the
torch backend from the suite's calibration images (2,048 random training images, batches of
128) and scored on ``--val`` other random training images the calibration never saw: accuracy
and agreement with the ANN's predictions. Test images are never read, so a default chosen
here is not tuned on the test set. Needs the network's checkpoint (``python -m benchmarks
--networks vgg --train-only``, or the one committed under ``benchmarks/checkpoints``)::

    python benchmarks/option_sweep.py --network vgg --timesteps 8 --group ftbc
    python benchmarks/option_sweep.py --network vgg --timesteps 4,8,16,32 --group bound

Writes ``benchmarks/results/option_sweep-<network>-<group>.json``. With 2,000 images one
image is 0.05 pt and the standard error of an accuracy near 91 % is about 0.6 pt: read
differences under a point as ties.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import snnbridge  # noqa: E402
from benchmarks import networks as nets  # noqa: E402
from benchmarks.run import ADVANCED, ROBUST_CW  # noqa: E402
from examples.cifar10 import data as cdata  # noqa: E402

RCW = ROBUST_CW["robustnorm"]  #: the suite's channel-wise robustnorm options
#: the suite's cheaper weight calibration options (its ADVANCED without the preset)
WC = {k: v for k, v in ADVANCED["snn_calibration"].items() if k != "preset"}
WC_ONLY = {"snn_calibration": {**WC, "steps": ["wc"]}}  #: that weight calibration alone, no BC or PC
WC_FLOOR = {"snn_calibration": {**WC_ONLY["snn_calibration"], "wc_quantizer": "floor"}}  #: ... fitted to a floor
#: the suite's advanced calibration with the official code's floor model in both the search and WC
OFFICIAL_ADVANCED = {"snn_calibration": {**ADVANCED["snn_calibration"], "search_quantizer": "floor",
                                         "wc_quantizer": "floor"}}
#: named groups of variants: label -> recipe
GROUPS: dict[str, dict[str, list]] = {
    "ftbc": {  # FTBC's budget (batches x iterations) after the two best threshold sources
        "robustnorm cw + ftbc (10 x 2, default)": [{"robustnorm": RCW}, "ftbc"],
        "robustnorm cw + ftbc (10 x 5)": [{"robustnorm": RCW}, {"ftbc": {"iterations": 5}}],
        "robustnorm cw + ftbc (16 x 2)": [{"robustnorm": RCW}, {"ftbc": {"batches": 16}}],
        "ltb + ftbc (10 x 2, default)": ["ltb", "ftbc"],
        "ltb + ftbc (10 x 5)": ["ltb", {"ftbc": {"iterations": 5}}],
    },
    "threshold-under-ftbc": {  # which threshold source FTBC corrects best
        "robustnorm cw 99 % + ftbc": [{"robustnorm": {**RCW, "percentile": 99.0}}, "ftbc"],
        "robustnorm cw 99.5 % + ftbc": [{"robustnorm": {**RCW, "percentile": 99.5}}, "ftbc"],
        "robustnorm cw 99.9 % + ftbc": [{"robustnorm": RCW}, "ftbc"],
        "robustnorm cw 99.99 % + ftbc": [{"robustnorm": {**RCW, "percentile": 99.99}}, "ftbc"],
        "snn_calibration cw MSE thresholds + ftbc": [{"snn_calibration": {"channelwise": True, "steps": []}}, "ftbc"],
        "ltb + ftbc": ["ltb", "ftbc"],
        "robustnorm cw + opi + ftbc": [{"robustnorm": RCW}, "opi", "ftbc"],
        "ltb (no delayed evaluation) + ftbc": [{"ltb": {"delayed_evaluation": False}}, "ftbc"],
    },
    "weights": {  # weight calibration (SNN Calibration's WC fits the weights to the quantized neuron), with FTBC
        "snn_calibration light (bc, default)": ["snn_calibration"],
        "snn_calibration advanced (wc 512 x 2000)": [ADVANCED],  # default quantizers: floor search, neuron WC
        # the official search and WC model a floor quantizer while the shifted neuron rounds: the two differ by
        # theta/(2T), half a threshold at T = 1, theta/64 at T = 32
        "snn_calibration advanced, floor quantizers (official)": [OFFICIAL_ADVANCED],
        "snn_calibration light, round quantizer": [{"snn_calibration": {"search_quantizer": "round"}}],
        "snn_calibration advanced, round quantizers": [{"snn_calibration": {**ADVANCED["snn_calibration"],
                                                                            "search_quantizer": "round",
                                                                            "wc_quantizer": "round"}}],
        "snn_calibration wc only": [WC_ONLY],
        "snn_calibration pc only": [{"snn_calibration": {"steps": ["pc"]}}],
        "robustnorm cw + snn_calibration wc + ftbc": [{"robustnorm": RCW}, WC_ONLY, "ftbc"],
        "ltb + snn_calibration wc + ftbc": ["ltb", WC_ONLY, "ftbc"],
        # the two stacks above as first measured, before WC modelled its neuron (floor, as the official code)
        "robustnorm cw + snn_calibration wc (floor) + ftbc": [{"robustnorm": RCW}, WC_FLOOR, "ftbc"],
        "ltb + snn_calibration wc (floor) + ftbc": ["ltb", WC_FLOOR, "ftbc"],
    },
    "qcfs-presim": {  # COS's rho and SRP's tau, the pre-simulation steps (QCFS networks)
        **{f"qcfs + cos (rho {r})": ["qcfs", {"cos": {"rho": r}}] for r in (2, 4, 8)},
        **{f"qcfs + srp (tau {t})": ["qcfs", {"srp": {"tau": t}}] for t in (2, 4, 8)},
    },
    "qcfs-stacks": {  # what can be stacked on COS at low T (QCFS networks; rho, tau = auto)
        "qcfs + cos": ["qcfs", "cos"],
        "qcfs + cos (2 rounds)": ["qcfs", {"cos": {"rounds": 2}}],
        "qcfs + cos + ftbc": ["qcfs", "cos", "ftbc"],
        "qcfs + cos + snn_calibration": ["qcfs", "cos", "snn_calibration"],
        "qcfs + cos + srp": ["qcfs", "cos", "srp"],
    },
    "bound": {},  # only the rate-code bound (--bound implied)
}


def validation(train_set, exclude: set[int], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random training images that are not in ``exclude`` (the calibration images)."""
    g = torch.Generator().manual_seed(seed)
    idx = [i for i in torch.randperm(len(train_set), generator=g).tolist() if i not in exclude][:n]
    return cdata.to_tensors(torch.utils.data.Subset(train_set, idx))


@torch.no_grad()
def predictions(model, x: torch.Tensor, bs: int = 250) -> torch.Tensor:
    return torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])


@torch.no_grad()
def snn_predictions(snn, x: torch.Tensor, T: int, bs: int = 250) -> torch.Tensor:
    """Predictions after T counted steps (below a look-ahead such as COS's rho, the first T of a rho-step run)."""
    return predictions(lambda b: snn(b, timesteps=T), x, bs)


@torch.no_grad()
def quantized_ann(model, snn, T: int) -> torch.nn.Module:
    """A copy of ``model`` whose activations are rounded to ``T`` levels of ``snn``'s thresholds,
    ``theta * clamp(floor(a T / theta + 1/2), 0, T) / T``: an ideal rate code, what those thresholds give when
    quantization is the SNN's only error (a reference for threshold methods: corrections such as FTBC's biases
    can move past it, weight calibration further)."""
    ann = copy.deepcopy(model)
    modules = dict(ann.named_modules())
    for name, site in snn.sites.items():
        th = torch.as_tensor(snn.specs[name].threshold, dtype=torch.float32)

        def hook(_module, _inputs, out, th=th):
            t = th.view(1, -1, *([1] * (out.dim() - 2))) if th.numel() > 1 else th
            return t * torch.clamp(torch.floor(out / t * T + 0.5), 0, T) / T

        modules[site.info.source].register_forward_hook(hook)
    return ann


def scores(pred: torch.Tensor, labels: torch.Tensor, ann: torch.Tensor) -> dict[str, float]:
    """Accuracy and agreement with the ANN's predictions, in %."""
    return {"accuracy": float((pred == labels).float().mean()) * 100,
            "agreement": float((pred == ann).float().mean()) * 100}


def merged(old: dict, new: dict) -> dict:
    """``new`` plus the rows of ``old`` it does not measure again (``--merge``); refused across checkpoints/images."""
    same = ("network", "checkpoint", "group", "val_images", "calib_images")
    differ = [k for k in same if old.get(k) != new[k]]
    if differ:
        raise SystemExit(f"error: --merge: the existing file differs in {', '.join(differ)} "
                         f"({', '.join(f'{old.get(k)} vs {new[k]}' for k in differ)}); write elsewhere with --out")
    fresh = {(r["T"], r["label"]) for r in new["rows"]}
    kept = [r for r in old["rows"] if (r["T"], r["label"]) not in fresh]
    commands = old.get("commands", [old["command"]] if "command" in old else [])
    return {**new, "rows": sorted(kept + new["rows"], key=lambda r: r["T"]), "commands": [*commands, new["command"]]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="vgg", choices=nets.NETWORKS)
    p.add_argument("--group", default="ftbc", choices=sorted(GROUPS))
    p.add_argument("--timesteps", default="8", help="comma-separated T")
    p.add_argument("--val", type=int, default=2000, help="held-out training images")
    p.add_argument("--calib", type=int, default=2048, help="calibration images (the suite's 2,048)")
    p.add_argument("--checkpoints", default="benchmarks/checkpoints")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bound", action="store_true", help="also score the ANN with activations rounded to T levels of "
                   "channel-wise robustnorm's thresholds (an ideal rate code, quantization its only error)")
    p.add_argument("--only", action="append", default=None, metavar="LABEL",
                   help="a label of the group to run (repeat for more; labels hold commas; default: all)")
    p.add_argument("--out", default=None)
    p.add_argument("--merge", action="store_true", help="keep the rows of an existing output file (same network "
                   "checkpoint and images) for the (T, label) pairs this run does not measure")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.bound = args.bound or args.group == "bound"
    Ts = [int(t) for t in args.timesteps.split(",")]
    unknown = [lbl for lbl in args.only or [] if lbl not in GROUPS[args.group]]
    if unknown:
        p.error(f"--only {unknown[0]!r} is not a label of group {args.group!r}; its labels: "
                + "; ".join(GROUPS[args.group]))
    kind, root = cdata.resolve(None)
    train_set, _ = cdata.open_splits(kind, root)
    calib_set = cdata.seeded_subset(train_set, args.calib, 2)  # the suite's calibration draw (seed 0 + 2)
    x_cal, _ = cdata.to_tensors(calib_set)
    xv, yv = validation(train_set, set(calib_set.indices), args.val, seed=123)
    xv = cdata.normalize(xv)

    def no_training():  # nets.obtain trains a missing network; this script only reads checkpoints
        raise SystemExit(f"error: {args.network} has no complete checkpoint under {args.checkpoints}; train it "
                         f"first (python -m benchmarks --networks {args.network} --train-only)")

    data = nets.Data("cifar10", xv[:1], yv[:1], x_cal, no_training, len(train_set))
    model, meta = nets.obtain(args.network, nets.Training(), data, args.checkpoints, log=lambda s: None)
    calib = data.calibration(128)
    ann = predictions(model, xv)
    ann_acc = float((ann == yv).float().mean()) * 100
    print(f"{args.network}: ANN {ann_acc:.2f} % on {len(yv)} held-out training images", flush=True)
    rows = []
    bound_snn = None  # channel-wise robustnorm's thresholds do not depend on T: converted once
    for T in Ts:
        for label, recipe in GROUPS[args.group].items():
            if args.only and label not in args.only:
                continue
            t0 = time.perf_counter()
            snn = snnbridge.convert(model, recipe=recipe, calibration=calib, timesteps=T, backend="torch",
                                    progress=False)
            seconds = time.perf_counter() - t0
            pred = snn_predictions(snn, xv, T)
            row = {"T": T, "label": label, "recipe": recipe, **scores(pred, yv, ann),
                   "convert_seconds": round(seconds, 1), "steps_run": snn.steps_for(T)}
            rows.append(row)
            print(f"T={T:<3d} {label:45s} acc {row['accuracy']:6.2f}  agree {row['agreement']:6.2f}  "
                  f"{seconds:6.1f} s  ({row['steps_run']} steps)", flush=True)
        if args.bound:  # the rate-code bound of channel-wise robustnorm's thresholds
            if bound_snn is None:
                bound_snn = snnbridge.convert(model, [ROBUST_CW], calibration=calib, timesteps=T, progress=False)
            pred = predictions(quantized_ann(model, bound_snn, T), xv)
            row = {"T": T, "label": "bound: ANN rounded to T levels of robustnorm cw thresholds", "recipe": None,
                   **scores(pred, yv, ann)}
            rows.append(row)
            print(f"T={T:<3d} {row['label']:45s} acc {row['accuracy']:6.2f}  agree {row['agreement']:6.2f}", flush=True)
    command = "python benchmarks/option_sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"network": args.network, "checkpoint": f"{args.network}-{meta.get('hash')}.pt", "ann_accuracy": ann_acc,
              "val_images": len(yv), "calib_images": len(x_cal), "group": args.group, "rows": rows,
              "command": command, "machine": nets.machine()}
    out = Path(args.out or f"benchmarks/results/option_sweep-{args.network}-{args.group}.json")
    if args.merge and out.exists():
        result = merged(json.loads(out.read_text()), result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
