"""Benchmark: data-driven corrections on the CIFAR-10 example CNN, against SpikingJelly 2.0's own converters.

    flock /tmp/snnbridge-cpu.lock .venv/bin/python benchmarks/data_driven.py

Accuracy at T = 4, 8, 16, 32, 64 (seeded random test subset) and conversion wall time for

* snnbridge: maxnorm, robustnorm (99.9 %), calibration light, calibration advanced, ltb,
  robustnorm + ftbc, and stacks (``--stacks``);
* SpikingJelly 2.0.0 on the same network and calibration images:
  ``ann2snn.Converter(RateCodingRecipe(loader, mode='max'))``, ``mode='99.9%'``,
  ``LocalThresholdBalancingRecipe(loader)``, and the latter read out from
  ``ann2snn.estimate_delay_start`` (SpikingJelly's delayed readout helper).

T-agnostic methods (maxnorm, robustnorm, ltb and the SpikingJelly models) are converted once
and read out at every T from one run (``snn.sweep``; ltb's delayed evaluation is applied per
prefix T). T-specific methods (calibration, ftbc) are converted *once per T* and run for that T,
as data-driven corrections are T-specific. Only the public APIs of snnbridge, of the example
(``examples/cifar10/data.py``, ``model.py``) and of SpikingJelly are used. The network is the
example's CNN, trained here for ``--epochs`` epochs (or loaded from ``--checkpoint``). Methods are
computed once and backend-independent (the tests check identical spikes on every backend), so the
accuracies are measured on ``--backend`` (default: the torch reference).

Writes ``data_driven.json`` and ``data_driven.png`` into ``--out``; partial results are kept
in the JSON after every method, and ``--resume`` skips methods already there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import snnbridge  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.common import acc_at, batches  # noqa: E402
from examples.cifar10 import data as cdata  # noqa: E402
from examples.cifar10.model import make_model  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: the example's lookup)")
    p.add_argument("--checkpoint", default="runs/data_driven/ann.pt", help="trained ANN (trained and saved if absent)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-samples", type=int, default=50000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--calib-samples", type=int, default=1024, help="random training images, batches of 128")
    p.add_argument("--timesteps", default="4,8,16,32,64")
    p.add_argument("--backend", default="torch")
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=None, help="comma-separated subset of the method labels")
    p.add_argument("--resume", action="store_true", help="keep methods already in the JSON")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


# -- data and model ---------------------------------------------------------------------------------------


def load_data(args):
    kind, root = cdata.resolve(args.data)
    train_set, test_set = cdata.open_splits(kind, root)
    test = cdata.seeded_subset(test_set, args.test_samples, args.seed + 1)
    calib = cdata.seeded_subset(train_set, args.calib_samples, args.seed + 2)
    x_test, y_test = cdata.to_tensors(test, True, "decode test")
    x_cal, _ = cdata.to_tensors(calib, True, "decode calibration")
    return train_set, (x_test, y_test), [cdata.normalize(x_cal[i:i + 128]) for i in range(0, len(x_cal), 128)]


def get_model(args, train_set):
    ckpt = Path(args.checkpoint)
    model = make_model()
    if ckpt.is_file():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
        print(f"loaded {ckpt}", flush=True)
        return model.eval(), None
    sub = cdata.seeded_subset(train_set, args.train_samples, args.seed)
    x, y = cdata.to_tensors(sub, True, "decode train")
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    bs = 256
    steps = math.ceil(len(x) / bs)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=args.epochs * steps, pct_start=0.25)
    started = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(cdata.normalize(cdata.augment(x[idx], g))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{args.epochs} done, last loss {loss.item():.3f}", flush=True)
    model.eval()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "epochs": args.epochs, "train_samples": len(x)}, ckpt)
    return model, round(time.perf_counter() - started, 1)


# -- evaluation -------------------------------------------------------------------------------------------


def ann_acc(model, test, bs):
    return snnbridge.ann_accuracy(model, batches(test, bs))


# -- methods -----------------------------------------------------------------------------------------------

FTBC = {"ftbc": {"batches": 4, "iterations": 2}}
ADVANCED = {"calibration": {"preset": "advanced", "wc_samples": 512, "wc_iters": 2000, "wc_lr": 1e-5}}

#: label -> (kind, recipe); "sweep" = T-agnostic (one conversion), "per_T" = converted for each T
METHODS = {
    "maxnorm": ("sweep", ["maxnorm"]),
    "robustnorm": ("sweep", [{"robustnorm": {"percentile": 99.9}}]),
    "calibration light": ("per_T", [{"calibration": {"preset": "light"}}]),
    "calibration advanced": ("per_T", [ADVANCED]),
    "ltb": ("sweep", ["ltb"]),
    "ltb K=128": ("sweep", [{"ltb": {"iterations": 128}}]),
    "robustnorm+ftbc": ("per_T", [{"robustnorm": {"percentile": 99.9}}, FTBC]),
    # stacks
    "calibration light+ftbc": ("per_T", [{"calibration": {"preset": "light"}}, FTBC]),
    "ltb K=128+calibration light": ("per_T", [{"ltb": {"iterations": 128}}, {"calibration": {"preset": "light"}}]),
    "ltb K=128+ftbc": ("per_T", [{"ltb": {"iterations": 128}}, FTBC]),
}
SJ_METHODS = ("SJ RateCoding max", "SJ RateCoding 99.9%", "SJ LTB", "SJ LTB + estimate_delay_start")


def run_snnbridge(label, kind, recipe, model, calib, test, Ts, args):
    res = {"recipe": recipe, "kind": kind, "accuracy": {}, "conversion_seconds": {}}
    if kind == "sweep":
        t0 = time.perf_counter()
        snn = snnbridge.convert(model, recipe, calibration=calib, timesteps=max(Ts), backend=args.backend,
                                progress=False, seed=args.seed)
        res["conversion_seconds"]["all"] = round(time.perf_counter() - t0, 2)
        curve = common.sweep_curve(snn, test, max(Ts), args.eval_batch)
        res["curve"] = curve
        res["accuracy"] = {str(t): curve[t - 1] for t in Ts}
        res["notes"] = snn.report.get("notes", [])
        return res
    res["notes"] = {}
    for T in Ts:
        t0 = time.perf_counter()
        snn = snnbridge.convert(model, recipe, calibration=calib, timesteps=T, backend=args.backend,
                                progress=False, seed=args.seed)
        res["conversion_seconds"][str(T)] = round(time.perf_counter() - t0, 2)
        res["accuracy"][str(T)] = acc_at(snn, test, T, args.eval_batch)
        res["notes"][str(T)] = snn.report.get("notes", [])
        print(f"    {label} T={T}: {100 * res['accuracy'][str(T)]:.2f}% "
              f"(convert {res['conversion_seconds'][str(T)]:.1f} s)", flush=True)
    return res


def run_spikingjelly(model, calib, test, Ts, args):
    out = common.run_spikingjelly(model, calib, test, max(Ts), max(1, args.eval_batch // 5), SJ_METHODS)
    for res in out.values():
        res["accuracy"] = {str(t): res["curve"][t - 1] for t in Ts}
        res.pop("eval_seconds", None)
    return out


# -- output ------------------------------------------------------------------------------------------------


def conv_time(res):
    c = res["conversion_seconds"]
    if "all" in c:
        return f"{c['all']:.1f}"
    return "/".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in c.values())


def table(results, Ts):
    rows = [["method", *[f"T={t}" for t in Ts], "conversion s (per T if T-specific)"]]
    rows.append(["ANN", *[f"{100 * results['ann_accuracy']:.2f}"] * len(Ts), "-"])
    for label, res in results["methods"].items():
        rows.append([label, *[f"{100 * res['accuracy'][str(t)]:.2f}" for t in Ts], conv_time(res)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    def fmt(r):
        return "  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])


def plot(results, Ts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counterpart = {"SJ RateCoding max": "maxnorm", "SJ RateCoding 99.9%": "robustnorm", "SJ LTB": "ltb",
                   "SJ LTB + estimate_delay_start": "ltb"}
    palette = plt.get_cmap("tab20").colors
    colors = {label: palette[i % len(palette)] for i, label in
              enumerate(lbl for lbl in results["methods"] if not lbl.startswith("SJ"))}
    fig, axes = plt.subplots(1, 2, figsize=(16, 5.5))
    for ax, zoom in zip(axes, (False, True)):
        for label, res in results["methods"].items():
            ys = [100 * res["accuracy"][str(t)] for t in Ts]
            sj = label.startswith("SJ")
            color = colors.get(counterpart.get(label, label), "gray")
            ax.plot(Ts, ys, ":" if "delay" in label else ("--" if sj else "-"), color=color,
                    marker="s" if sj else "o", ms=4 if sj else 5, label=label)
        ax.axhline(100 * results["ann_accuracy"], color="k", lw=1, label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ts, [str(t) for t in Ts])
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if zoom:
            ann = 100 * results["ann_accuracy"]
            ax.set_ylim(ann - 15, ann + 1.5)
            ax.set_title("zoom (SpikingJelly: dashed, in the colour of the snnbridge counterpart)")
        else:
            ax.set_title(f"CIFAR-10 example CNN, {results['config']['test_samples']} random test images")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    Ts = [int(t) for t in args.timesteps.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "data_driven.json"
    started = time.perf_counter()
    train_set, test, calib = load_data(args)
    model, train_s = get_model(args, train_set)
    command = ("flock /tmp/snnbridge-cpu.lock .venv/bin/python benchmarks/data_driven.py "
               + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    resumed = args.resume and path.is_file()
    results = json.loads(path.read_text()) if resumed else {"methods": {}}
    if resumed:  # keep the first run's configuration; record this invocation
        results["config"].setdefault("resumed", []).append(command)
    else:
        results["config"] = {"timesteps": Ts, "test_samples": len(test[0]),
                             "calib_samples": sum(len(c) for c in calib),
                             "backend": args.backend, "threads": args.threads, "seed": args.seed,
                             "checkpoint": args.checkpoint, "epochs": args.epochs, "command": command,
                             "torch": torch.__version__, "python": platform.python_version(),
                             "machine": platform.machine()}
    if train_s is not None:
        results["config"]["train_seconds"] = train_s
    results["ann_accuracy"] = ann_acc(model, test, args.eval_batch)
    print(f"ANN accuracy {100 * results['ann_accuracy']:.2f}% on {len(test[0])} test images", flush=True)
    wanted = set(args.methods.split(",")) if args.methods else None

    def save():
        path.write_text(json.dumps(results, indent=1))

    for label, (kind, recipe) in METHODS.items():
        if (wanted and label not in wanted) or label in results["methods"]:
            continue
        print(f"  {label} ...", flush=True)
        results["methods"][label] = run_snnbridge(label, kind, recipe, model, calib, test, Ts, args)
        save()
    if not wanted or any(m in wanted for m in SJ_METHODS):
        if not all(m in results["methods"] for m in SJ_METHODS):
            print("  SpikingJelly converters ...", flush=True)
            results["methods"].update(run_spikingjelly(model, calib, test, Ts, args))
            save()
    results["config"]["seconds_last_invocation"] = round(time.perf_counter() - started, 1)
    save()
    plot(results, Ts, out / "data_driven.png")
    print(table(results, Ts))
    print(f"wrote {path} and {out / 'data_driven.png'}")
    return results


if __name__ == "__main__":
    main()
