"""Runtime cost of converted SNNs, measured side by side in one run.

For each network and backend it prints the SNN's wall time divided by T times the ANN's wall
time (1.0 would mean "costs exactly T ANN passes"), and compares snnbridge's SNN with the SNN
that SpikingJelly 2.0's own converter (``ann2snn.Converter(RateCodingRecipe)``) produces for
the same network, run the SpikingJelly way (multi-step mode, one call on a [T, B, ...] input).

    python benchmarks/runtime_cost.py [--timesteps 32] [--batch 32] [--repeats 3] [--out benchmarks/results]

Writes ``runtime_cost.json`` and ``runtime_cost.png`` next to each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import snnbridge


def small_vgg() -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(3, 32), *block(32, 32), nn.AvgPool2d(2), *block(32, 64), *block(64, 64),
                         nn.AvgPool2d(2), *block(64, 128), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(128 * 16, 10))


NETWORKS = {"small_vgg (CIFAR example size)": small_vgg, "resnet18": lambda: torchvision.models.resnet18(num_classes=10)}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (op registration, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def spikingjelly_converter_time(ann, calib, x, T, repeats):
    from spikingjelly.activation_based import ann2snn, functional

    sj = ann2snn.Converter(ann2snn.RateCodingRecipe(dataloader=calib, mode="max")).convert(ann)
    functional.set_step_mode(sj, "m")
    seq = x.unsqueeze(0).repeat(T, *[1] * x.dim())

    def run():
        functional.reset_net(sj)
        with torch.no_grad():
            sj(seq).mean(0)
    return best_time(run, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    T, B = args.timesteps, args.batch
    g = torch.Generator().manual_seed(0)
    calib = [torch.rand(B, 3, 32, 32, generator=g) for _ in range(2)]
    x = torch.rand(B, 3, 32, 32, generator=g)
    rows = []
    for net_name, factory in NETWORKS.items():
        ann = factory().eval()
        with torch.no_grad():
            t_ann = best_time(lambda: ann(x), args.repeats)
        for backend in snnbridge.get_registry().names("backend"):
            snn = snnbridge.convert(ann, ["maxnorm"], calibration=calib, backend=backend, timesteps=T, progress=False)
            with torch.no_grad():
                t_snn = best_time(lambda: snn(x), args.repeats)
            rows.append({"network": net_name, "impl": f"snnbridge/{backend}", "ann_s": t_ann, "snn_s": t_snn,
                         "ratio_snn_over_T_ann": t_snn / (T * t_ann)})
        t_sj = spikingjelly_converter_time(ann, calib, x, T, args.repeats)
        rows.append({"network": net_name, "impl": "spikingjelly ann2snn (RateCodingRecipe)", "ann_s": t_ann,
                     "snn_s": t_sj, "ratio_snn_over_T_ann": t_sj / (T * t_ann)})
    print(f"\nT = {T}, batch = {B}, torch threads = {torch.get_num_threads()}, {platform.processor() or 'cpu'}")
    print(f"{'network':32s} {'implementation':42s} {'ANN ms':>8s} {'SNN ms':>9s} {'SNN/(T*ANN)':>12s}")
    for r in rows:
        print(f"{r['network']:32s} {r['impl']:42s} {1e3 * r['ann_s']:8.2f} {1e3 * r['snn_s']:9.1f} "
              f"{r['ratio_snn_over_T_ann']:12.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"timesteps": T, "batch": B, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "snnbridge": snnbridge.__version__, "device": "cpu"}
    (out / "runtime_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['network'].split(' ')[0]}\n{r['impl'].replace('spikingjelly ann2snn (RateCodingRecipe)', 'SJ converter')}"
              for r in rows]
    ax.bar(range(len(rows)), [r["ratio_snn_over_T_ann"] for r in rows])
    ax.axhline(1.0, ls="--", c="k", lw=1)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("SNN time / (T x ANN time)")
    ax.set_title(f"Runtime cost, T={T}, batch={B} (CPU)")
    fig.tight_layout()
    fig.savefig(out / "runtime_cost.png", dpi=120)
    print(f"wrote {out / 'runtime_cost.json'} and {out / 'runtime_cost.png'}")


if __name__ == "__main__":
    main()
