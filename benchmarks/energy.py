"""Benchmark: accuracy vs SynOps, MACs and energy of the CIFAR-10 example CNN, per recipe and T = 1..32.

    flock /tmp/snnbridge-cpu.lock .venv/bin/python benchmarks/energy.py

The ANN is the example's CNN (``examples.cifar10.model:make_model``) with the weights of
``runs/cifar10/ann.pt`` (written by the example's main command); the data are read as
``examples/finetune/run.py`` reads them (``examples/cifar10/data.py``: seeded random subsets of the
class-ordered archive). For every recipe:

* T-independent recipes (``robustnorm``, ``robustnorm + opi``, ``ltb``) are converted once; the
  accuracy at every T comes from one run (``snnbridge.accuracy_curve``; ltb's delayed decoding is
  applied per T), and the counts at every T from one ``snnbridge.energy(..., per_step=True)`` run:
  the running sum of the per-step counts is the cost of a T-step run (checked against a direct
  ``snnbridge.energy`` call at one T, stored as ``check``);
* ``snn_calibration`` (light preset: bias calibration, T-specific) is converted and measured once
  per T of ``--per-t``.

Counts are per image, on ``--energy-samples`` test images, with the 45 nm FP32 costs (4.6 pJ per
MAC, 0.9 pJ per accumulate and per neuron update; Horowitz, ISSCC 2014). Writes ``energy.json``
and ``energy.png`` (accuracy vs energy, one curve per recipe, and accuracy vs T) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import snnbridge  # noqa: E402
from examples.cifar10 import data as cdata  # noqa: E402
from examples.cifar10.model import make_model  # noqa: E402

ROBUST = {"robustnorm": {"percentile": 99.9}}
#: label -> (kind, recipe): "sweep" = one conversion read out at every T, "per_T" = converted for each T
RECIPES = {
    "robustnorm": ("sweep", [ROBUST]),
    "robustnorm + opi": ("sweep", [ROBUST, "opi"]),
    "snn_calibration": ("per_T", [{"snn_calibration": {"preset": "light"}}]),
    "ltb": ("sweep", ["ltb"]),
}
KEYS = ("synops", "macs", "adds", "neuron_updates", "spikes", "energy_pj")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: the example's lookup)")
    p.add_argument("--checkpoint", default="runs/cifar10/ann.pt", help="the example's trained ANN")
    p.add_argument("--test-samples", type=int, default=2000, help="random test images for the accuracy")
    p.add_argument("--energy-samples", type=int, default=256, help="of those, the images the counts are taken on")
    p.add_argument("--calib-samples", type=int, default=1024, help="random training images, batches of 128")
    p.add_argument("--timesteps", type=int, default=32, help="largest T (every T from 1 is measured)")
    p.add_argument("--per-t", default="1,2,4,8,16,32", help="the T values of T-specific recipes")
    p.add_argument("--costs", default="fp32_45nm", help="energy preset of snnbridge.energy")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of the recipe labels")
    p.add_argument("--backend", default="torch")
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def load(args):
    kind, root = cdata.resolve(args.data)
    train_set, test_set = cdata.open_splits(kind, root)
    x_test, y_test = cdata.to_tensors(cdata.seeded_subset(test_set, args.test_samples, args.seed + 1), False, "test")
    x_cal, _ = cdata.to_tensors(cdata.seeded_subset(train_set, args.calib_samples, args.seed + 2), False, "calib")
    calib = [cdata.normalize(x_cal[i:i + 128]) for i in range(0, len(x_cal), 128)]
    model = make_model(num_classes=len(train_set.classes))
    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"] if "state_dict" in saved else saved)
    return model.eval(), (x_test, y_test), calib


def batches(test, bs):
    x, y = test
    for i in range(0, len(x), bs):
        yield cdata.normalize(x[i:i + bs]), y[i:i + bs]


@torch.no_grad()
def acc_at(snn, test, T, bs):
    x, y = test
    return sum(int((snn(cdata.normalize(x[i:i + bs]), timesteps=T).argmax(1) == y[i:i + bs]).sum())
               for i in range(0, len(x), bs)) / len(x)


def point(T, acc, counts, ann):
    """One (T, accuracy, counts) row, counts per image."""
    return {"T": T, "accuracy": acc, **{k: counts[k] for k in KEYS}, "ratio": counts["energy_pj"] / ann["energy_pj"],
            "synops_per_ann_mac": counts["synops"] / ann["macs"]}


def run_recipe(label, kind, recipe, model, calib, test, x_energy, args, ann):
    Tmax = args.timesteps
    res = {"recipe": recipe, "kind": kind, "points": []}
    started = time.perf_counter()
    if kind == "sweep":
        snn = snnbridge.convert(model, recipe, calibration=calib, timesteps=Tmax, backend=args.backend,
                                progress=False, seed=args.seed)
        curve = snnbridge.accuracy_curve(snn, batches(test, args.eval_batch), [Tmax], progress=False)["curve"]
        e = snnbridge.energy(snn, x_energy, Tmax, costs=args.costs, per_step=True)
        if e["warmup"] or e["steps_run"] != Tmax:
            raise SystemExit(f"{label}: a pre-simulation makes shorter runs differ; measure it with kind per_T")
        steps = e["total"]["per_step"]
        for T in range(1, Tmax + 1):
            res["points"].append(point(T, curve[T - 1], {k: sum(steps[k][:T]) for k in KEYS}, ann))
        check_T = min(8, Tmax)
        direct = snnbridge.energy(snn, x_energy, check_T, costs=args.costs)["total"]
        res["check"] = {"T": check_T, "energy_pj_direct": direct["energy_pj"],
                        "energy_pj_running_sum": res["points"][check_T - 1]["energy_pj"]}
        res["layers_at_Tmax"] = e["layers"]
    else:
        for T in sorted({int(t) for t in args.per_t.split(",") if int(t) <= Tmax}):
            snn = snnbridge.convert(model, recipe, calibration=calib, timesteps=T, backend=args.backend,
                                    progress=False, seed=args.seed)
            counts = snnbridge.energy(snn, x_energy, T, costs=args.costs)["total"]
            res["points"].append(point(T, acc_at(snn, test, T, args.eval_batch), counts, ann))
            print(f"    {label} T={T}: {100 * res['points'][-1]['accuracy']:.2f}%", flush=True)
    res["seconds"] = round(time.perf_counter() - started, 1)
    return res


def table(results, Ts=(1, 2, 4, 8, 16, 32)):
    ann = results["ann"]
    lines = [f"ANN: {100 * ann['accuracy']:.2f}%, {ann['macs'] / 1e6:.2f} M MACs, {ann['energy_pj'] / 1e6:.2f} uJ "
             "per image", "",
             "| recipe | T | accuracy (%) | SynOps (M) | SynOps / ANN MAC | SNN MACs (M) | energy (uJ) | "
             "energy / ANN |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, res in results["recipes"].items():
        for p in res["points"]:
            if p["T"] in Ts:
                lines.append(f"| {label} | {p['T']} | {100 * p['accuracy']:.2f} | {p['synops'] / 1e6:.2f} | "
                             f"{p['synops_per_ann_mac']:.3f} | {p['macs'] / 1e6:.3f} | {p['energy_pj'] / 1e6:.2f} | "
                             f"{p['ratio']:.3f} |")
    return "\n".join(lines)


def plot(results, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ann = results["ann"]
    for i, (label, res) in enumerate(results["recipes"].items()):
        pts = res["points"]
        color = f"C{i}"
        ax1.plot([p["ratio"] for p in pts], [100 * p["accuracy"] for p in pts], "-o", ms=3, color=color, label=label)
        for p in pts:
            if p["T"] in (1, 4, 16, 32):
                ax1.annotate(f"T={p['T']}", (p["ratio"], 100 * p["accuracy"]), fontsize=7, color=color,
                             xytext=(3, -9), textcoords="offset points")
        ax2.plot([p["T"] for p in pts], [100 * p["accuracy"] for p in pts], "-o", ms=3, color=color, label=label)
    for ax in (ax1, ax2):
        ax.axhline(100 * ann["accuracy"], color="k", lw=1, ls="--", label=f"ANN ({100 * ann['accuracy']:.1f}%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
    ax1.axvline(1.0, color="0.5", lw=1, ls=":")
    ax1.set_xscale("log")
    ax1.set_xlabel(f"SNN energy / ANN energy per image ({results['config']['costs']}; 1 = the ANN)")
    ax1.set_title("accuracy vs energy (SynOps x E_AC + MACs x E_MAC + neuron updates)", fontsize=10)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.set_xscale("log", base=2)
    ts = [1, 2, 4, 8, 16, 32]
    ax2.set_xticks(ts, [str(t) for t in ts])
    ax2.set_xlabel("time steps T")
    ax2.set_title(f"CIFAR-10 example CNN, {results['config']['test_samples']} random test images", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    labels = [s.strip() for s in args.recipes.split(",") if s.strip()]
    unknown = [s for s in labels if s not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe label(s) {unknown}; choose from {', '.join(RECIPES)}")
    started = time.perf_counter()
    model, test, calib = load(args)
    x_energy = cdata.normalize(test[0][:args.energy_samples])
    probe = snnbridge.convert(model, [ROBUST], calibration=calib, timesteps=1, progress=False)
    ann_counts = snnbridge.energy(probe, x_energy, costs=args.costs)
    ann = {"accuracy": snnbridge.ann_accuracy(model, batches(test, args.eval_batch)),
           "macs": ann_counts["total"]["ann_macs"], "adds": ann_counts["total"]["ann_adds"],
           "energy_pj": ann_counts["total"]["ann_energy_pj"]}
    print(f"ANN: {100 * ann['accuracy']:.2f}%, {ann['macs'] / 1e6:.2f} M MACs per image", flush=True)
    results = {"config": {**vars(args), "torch": torch.__version__, "python": platform.python_version()},
               "costs": ann_counts["costs"], "ann": ann, "recipes": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for label in labels:
        kind, recipe = RECIPES[label]
        print(f"  {label} ({kind})", flush=True)
        results["recipes"][label] = run_recipe(label, kind, recipe, model, calib, test, x_energy, args, ann)
        (out / "energy.json").write_text(json.dumps(results, indent=1))
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "energy.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "energy.png")
    print(table(results))
    print(f"wrote {out / 'energy.json'} and {out / 'energy.png'} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
