"""Fine-tuning a converted CIFAR-10 SNN: losses, surrogates, and adversarial robustness with and without gsr.

    python benchmarks/training.py                      # about 15 min on 2 CPU cores
    python benchmarks/training.py --train-samples 20000 --epochs 3 --robust-samples 1000

Part 1 - the SNN of ``examples/finetune`` (the examples/cifar10 CNN in pixel space, converted at T = 4
with ``robustnorm`` + ``opi``, SpikingJelly backend) fine-tuned with CE on the time-mean vs TET, each with
SpikingJelly's default surrogate (``Sigmoid(alpha=4)``) and with LocalZO: test accuracy before and after,
wall seconds per epoch.

Part 2 - the same SNN fine-tuned with TET + LocalZO, without and with ``gsr`` (``--gsr-lam``), then
attacked: clean, uniform noise, FGSM and PGD (7 steps) at eps = 2/255, 4/255, 8/255, each gradient
attack run through three surrogates (triangle, sigmoid, arc-tangent) and a sample counted robust only
if it survives all of them (Liu et al., ICML 2024, evaluate the same way: a single surrogate can hide
gradient obfuscation). Their pattern to look for: ``gsr`` narrows the gap between noise and
adversarial accuracy.

Writes ``training.json`` and ``training.png`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import snnbridge  # noqa: E402
from examples.finetune import run as ft  # noqa: E402

EPS = (2 / 255, 4 / 255, 8 / 255)
ATTACK_SURROGATES = {"triangle": {"sg": {"shape": "triangle"}}, "sigmoid": {"sg": {"shape": "sigmoid"}},
                     "atan": {"sg": {"shape": "atan"}}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ann-checkpoint", default="runs/cifar10/ann.pt")
    p.add_argument("--data", default=None)
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--robust-samples", type=int, default=500, help="test images attacked in part 2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--gsr-lam", type=float, default=0.002,
                   help="gsr weight; its term is about 500 x lam on this SNN at the start (pixel-space input)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--parts", default="1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _example_args(args, loss: str, surrogate: str):
    return ft.build_parser().parse_args([
        "--ann-checkpoint", args.ann_checkpoint, "--loss", loss, "--surrogate", surrogate,
        "--train-samples", str(args.train_samples), "--test-samples", str(args.test_samples),
        "--epochs", str(args.epochs), "--seed", str(args.seed), *(["--data", args.data] if args.data else []),
        *(["--no-progress"] if args.no_progress else [])])


def fine_tuned(ann, data, args, loss: str, surrogate: str):
    """(snn, record) after converting and fine-tuning on the SpikingJelly backend."""
    torch.manual_seed(args.seed)
    snn, rec = ft.run_framework(ann, data, _example_args(args, loss, surrogate), "spikingjelly")
    rec.update(loss=json.loads(loss), surrogate=json.loads(surrogate))
    return snn, rec


def part1(ann, data, args) -> list[dict]:
    rows = []
    for loss in ("[]", '["tet"]'):
        for surrogate in ("null", '"localzo"'):
            _, rec = fine_tuned(ann, data, args, loss, surrogate)
            name = "TET" if "tet" in loss else "CE(mean)"
            rec["label"] = f"{name} + {'LocalZO' if 'localzo' in surrogate else 'SJ Sigmoid'}"
            print(f"  {rec['label']:<24} {100 * rec['before']:.2f}% -> {100 * rec['after']:.2f}%  "
                  f"({rec['seconds_per_epoch']:.1f} s/epoch)", flush=True)
            rows.append(rec)
    return rows


def part2(ann, data, args) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(args.seed + 7)
    pick = torch.randperm(len(data["test"][0]), generator=g)[:args.robust_samples]
    x, y = ft.pixels(data["test"][0][pick]), data["test"][1][pick]
    surrogates = {k: snnbridge.surrogate(v, framework="spikingjelly") for k, v in ATTACK_SURROGATES.items()}
    for label, loss in (("TET + LocalZO", '["tet"]'), (f"TET + LocalZO + gsr(lam={args.gsr_lam:g})",
                                                        json.dumps(["tet", {"gsr": {"lam": args.gsr_lam}}]))):
        snn, rec = fine_tuned(ann, data, args, loss, '"localzo"')
        started = time.perf_counter()
        report = snnbridge.evaluate_robustness(snn, [(x[i:i + 100], y[i:i + 100]) for i in range(0, len(x), 100)],
                                               eps=EPS, surrogates=surrogates, seed=args.seed,
                                               progress=not args.no_progress)
        rec.update(label=label, robustness=report.to_dict(), attack_seconds=round(time.perf_counter() - started, 1))
        print(f"  {label}: fine-tuned {100 * rec['after']:.2f}%\n{report}", flush=True)
        rows.append(rec)
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if results.get("part1"):
        ax = axes[0]
        rows = results["part1"]
        xs = range(len(rows))
        ax.bar([i - 0.2 for i in xs], [100 * r["before"] for r in rows], 0.4, label="converted (T=4)")
        ax.bar([i + 0.2 for i in xs], [100 * r["after"] for r in rows], 0.4, label="fine-tuned")
        ax.axhline(100 * results["ann_accuracy"], color="k", ls="--", lw=1, label="ANN")
        ax.set_xticks(list(xs), [r["label"] for r in rows], rotation=15, fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("loss x surrogate", fontsize=10)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="upper left", ncol=3)
    if results.get("part2"):
        ax = axes[1]
        for rec, style in zip(results["part2"], ("-", "--")):
            rob = rec["robustness"]
            eps = [0.0] + [e * 255 for e in rob["eps"]]
            for attack, color in (("noise", "tab:green"), ("fgsm", "tab:orange"), ("pgd", "tab:red")):
                acc = [rob["clean_accuracy"]] + list(rob["accuracy"][attack])
                ax.plot(eps, [100 * a for a in acc], style, color=color, marker="o", ms=3,
                        label=f"{attack}, {rec['label']}")
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title("worst case over triangle / sigmoid / atan surrogates", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(json_path: str | Path) -> Path:
    """Redraw ``training.png`` next to a saved ``training.json``."""
    json_path = Path(json_path)
    out = json_path.with_suffix(".png")
    plot(json.loads(json_path.read_text()), out)
    return out


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(2)
    parts = {p.strip() for p in args.parts.split(",")}
    started = time.perf_counter()
    eargs = _example_args(args, '["tet"]', '"localzo"')
    data = ft.load_data(eargs)
    ann = ft.load_ann(eargs, data)
    ann_acc = snnbridge.ann_accuracy(ann, ft.batches(*data["test"], 250))
    print(f"ANN {100 * ann_acc:.2f}% on {len(data['test'][0])} test images", flush=True)
    results = {"config": vars(args), "ann_accuracy": ann_acc, "threads": torch.get_num_threads()}
    if "1" in parts:
        print("part 1: loss x surrogate", flush=True)
        results["part1"] = part1(ann, data, args)
    if "2" in parts:
        print("part 2: robustness with and without gsr", flush=True)
        results["part2"] = part2(ann, data, args)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "training.png")
    print(f"wrote {out / 'training.json'} and {out / 'training.png'} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
