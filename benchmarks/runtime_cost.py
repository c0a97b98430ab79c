"""Runtime and conversion cost of snnbridge's SNNs, measured side by side with SpikingJelly's own converter.

For each network (the small CIFAR VGG of the issue and torchvision's resnet18, both on 32x32
inputs), T and batch size, one process times, interleaved in several rounds (best of
``--repeats`` per round, the minimum over ``--rounds``):

* the ANN (one forward);
* snnbridge's SNN on every backend (``snn(x)``: T counted steps, decoded output);
* SpikingJelly 2.0's own converted model (``ann2snn.Converter(RateCodingRecipe(mode="max"))``)
  driven T times in single-step mode with ``functional.reset_net``, and once in multi-step mode
  on a ``[T, B, ...]`` input; the faster of the two is "SJ best".

It prints SNN / (T x ANN) and SNN / SJ best per backend, the peak memory of one run above the
resident set before it (Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``),
and the conversion seconds of the main recipes. Results go to ``runtime_cost.json`` and
``runtime_cost.png`` (``--out``). Run it on a quiet machine: ratios measured while other jobs
share the cores are meaningless.

    python benchmarks/runtime_cost.py                                  # the full grid (about 30-60 min on 2 cores)
    python benchmarks/runtime_cost.py --quick                          # VGG, T = 8, batches 1 and 32
    python benchmarks/runtime_cost.py --device cuda --batches 32,128   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import snnbridge

BACKENDS = ("torch", "spikingjelly", "snntorch")


def small_vgg() -> nn.Module:
    """6 conv layers 32-32-64-64-128-128 with BN and average pooling, an FC 256 head (CIFAR-10 size)."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(3, 32), *block(32, 32), nn.AvgPool2d(2), *block(32, 64), *block(64, 64),
                         nn.AvgPool2d(2), *block(64, 128), *block(128, 128), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(128 * 16, 256), nn.ReLU(), nn.Linear(256, 10))


NETWORKS = {"small_vgg": small_vgg, "resnet18": lambda: torchvision.models.resnet18(num_classes=10)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def _rss_kb(field: str) -> int | None:
    try:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return None


def peak_mb(fn, device) -> float | None:
    """Extra peak memory of one call of ``fn`` (MB): the CUDA allocator's peak, or on Linux the resident
    high-water mark above the resident set before the call (meaningful in a fresh process only: a warm
    allocator reuses freed memory, see ``peak_in_subprocess``)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    except OSError:
        return None
    before = _rss_kb("VmRSS")
    fn()
    after = _rss_kb("VmHWM")
    return None if before is None or after is None else max(0, after - before) / 1024


def peak_in_subprocess(net: str, impl: str, T: int, B: int, device: str, threads: int) -> float | None:
    """``peak_mb`` of the first run of ``impl`` in a fresh Python process (the allocator has nothing to reuse)."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--measure-peak", f"{net},{impl},{T},{B}", "--device", device,
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_MB ")]
    return json.loads(lines[-1][8:]) if proc.returncode == 0 and lines else None


def _measure_peak(spec: str, device) -> None:
    net, impl, T, B = spec.split(",")
    T, B = int(T), int(B)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ann = NETWORKS[net]().eval().to(device)
    calib = [torch.rand(32, 3, 32, 32, generator=g).to(device) for _ in range(2)]
    x = torch.rand(B, 3, 32, 32, generator=g).to(device)
    with torch.no_grad():
        if impl == "ANN":
            fn = lambda: ann(x)  # noqa: E731
        elif impl.startswith("snnbridge/"):
            b = impl.removeprefix("snnbridge/")
            options = {"compile": True} if b.endswith("+compile") else None
            snn = snnbridge.convert(ann, ["maxnorm"], calibration=calib, backend=b.split("+")[0], timesteps=T,
                                    progress=False, backend_options=options)
            fn = lambda: snn(x)  # noqa: E731
        else:
            fn = sj_runner(spikingjelly_model(ann, calib), x, T, "s" if "single" in impl else "m")
        print("PEAK_MB " + json.dumps(peak_mb(fn, device)), flush=True)


def spikingjelly_model(ann, calib):
    from spikingjelly.activation_based import ann2snn

    return ann2snn.Converter(ann2snn.RateCodingRecipe(dataloader=calib, mode="max")).convert(ann)


def sj_runner(sj, x, T, mode):
    from spikingjelly.activation_based import functional

    if mode == "s":
        def run():
            functional.set_step_mode(sj, "s")
            functional.reset_net(sj)
            out = 0
            for _ in range(T):
                out = out + sj(x)
            return out / T
    else:
        seq = x.unsqueeze(0).expand(T, *x.shape).contiguous()

        def run():
            functional.set_step_mode(sj, "m")
            functional.reset_net(sj)
            return sj(seq).mean(0)
    return run


def runtime_grid(args, device) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for net_name in args.networks:
        torch.manual_seed(0)
        ann = NETWORKS[net_name]().eval().to(device)
        calib = [torch.rand(32, 3, 32, 32, generator=g).to(device) for _ in range(2)]
        with torch.no_grad():
            sj = spikingjelly_model(ann, calib)
        for T in args.timesteps:
            snns = {b: snnbridge.convert(ann, ["maxnorm"], calibration=calib, backend=b.split("+")[0], timesteps=T,
                                         progress=False, backend_options={"compile": True} if b.endswith("+compile")
                                         else None)
                    for b in args.backends}
            for B in args.batches:
                x = torch.rand(B, 3, 32, 32, generator=g).to(device)
                impls = {"ANN": lambda ann=ann, x=x: ann(x)}
                impls.update({f"snnbridge/{b}": (lambda s=s, x=x: s(x)) for b, s in snns.items()})
                impls["SJ single-step"] = sj_runner(sj, x, T, "s")
                impls["SJ multi-step"] = sj_runner(sj, x, T, "m")
                times: dict[str, float] = {}
                with torch.no_grad():
                    for fn in impls.values():  # warm-up: op registration, allocator, plans
                        fn()
                    for _ in range(args.rounds):  # interleaved: every implementation sees the same machine state
                        for name, fn in impls.items():
                            times[name] = min(times.get(name, float("inf")), best_time(fn, args.repeats, device))
                    memory = ({name: peak_in_subprocess(net_name, name, T, B, args.device, args.threads)
                               for name in impls} if args.memory else {name: None for name in impls})
                sj_best = min(times["SJ single-step"], times["SJ multi-step"])
                for name, t in times.items():
                    row = {"network": net_name, "T": T, "batch": B, "impl": name, "seconds": t,
                           "snn_over_T_ann": t / (T * times["ANN"]) if name != "ANN" else 1.0 / T,
                           "over_sj_best": t / sj_best if name != "ANN" else None, "peak_mb": memory[name]}
                    rows.append(row)
                print(_format_block(rows[-len(times):]), flush=True)
    return rows


def _format_block(rows) -> str:
    r0 = rows[0]
    lines = [f"\n{r0['network']}, T = {r0['T']}, batch = {r0['batch']}",
             f"  {'implementation':26s} {'ms':>9s} {'/(T x ANN)':>11s} {'/SJ best':>9s} {'peak MB':>8s}"]
    for r in rows:
        sj = f"{r['over_sj_best']:9.2f}" if r["over_sj_best"] is not None else f"{'-':>9s}"
        mem = f"{r['peak_mb']:8.1f}" if r["peak_mb"] is not None else f"{'-':>8s}"
        ratio = f"{r['snn_over_T_ann']:11.2f}" if r["impl"] != "ANN" else f"{'-':>11s}"
        lines.append(f"  {r['impl']:26s} {1e3 * r['seconds']:9.1f} {ratio} {sj} {mem}")
    return "\n".join(lines)


CONVERSION_RECIPES = {
    "maxnorm + opi": ["maxnorm", "opi"],
    "robustnorm + opi": ["robustnorm", "opi"],
    "robustnorm channel-wise + opi": [{"robustnorm": {"channelwise": True}}, "opi"],
    "snn_calibration (light)": ["snn_calibration"],
    "snn_calibration (advanced)": [{"snn_calibration": {"preset": "advanced"}}],
    "robustnorm + ftbc": ["robustnorm", "ftbc"],
    "ltb (128 iterations)": [{"ltb": {"iterations": 128}}],
    "ltb (128 iterations) + ftbc": [{"ltb": {"iterations": 128}}, "ftbc"],
}


def conversion_times(args, device) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    ann = small_vgg().eval().to(device)
    calib = [torch.randn(args.calib_batch, 3, 32, 32, generator=g).to(device)
             for _ in range(max(1, args.calib_images // args.calib_batch))]
    rows = []
    print(f"\nconversion seconds, small_vgg, {sum(len(c) for c in calib)} calibration images in batches of "
          f"{args.calib_batch}:", flush=True)
    for label in args.recipes:
        recipe = CONVERSION_RECIPES[label]
        t_specific = any(e.info.t_specific for e in snnbridge.build_recipe(recipe).entries)
        for T in (args.conversion_timesteps if t_specific else [args.conversion_timesteps[0]]):
            t = time.perf_counter()
            snnbridge.convert(ann, recipe, calibration=calib, timesteps=T, progress=False)
            sec = time.perf_counter() - t
            rows.append({"recipe": label, "T": T if t_specific else None, "seconds": round(sec, 2)})
            print(f"  {label:32s} {'T = ' + str(T) if t_specific else 'any T':>8s} {sec:8.1f} s", flush=True)
    return rows


def plot(rows, path: Path, device: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    snn = [r for r in rows if r["impl"].startswith("snnbridge/")]
    configs = list(dict.fromkeys((r["network"], r["T"], r["batch"]) for r in snn))
    impls = list(dict.fromkeys(r["impl"] for r in snn))
    fig = Figure(figsize=(max(8, 0.9 * len(configs) + 2), 6.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        for ax, key in zip(axes, ("over_sj_best", "snn_over_T_ann")):
            vals = [next(r[key] for r in snn if r["impl"] == impl and (r["network"], r["T"], r["batch"]) == c)
                    for c in configs]
            ax.bar([i + (k - (len(impls) - 1) / 2) * width for i in range(len(configs))], vals, width,
                   label=impl.removeprefix("snnbridge/"))
    axes[0].axhline(1.0, color="k", lw=1, ls="--")
    axes[0].set_ylabel("SNN / SpikingJelly's\nconverted model (best mode)")
    axes[0].set_title(f"snnbridge runtime ({device}, {torch.get_num_threads()} threads): below 1 = faster than "
                      "SpikingJelly's own converter", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].axhline(1.0, color="k", lw=1, ls="--")
    axes[1].set_ylabel("SNN / (T x ANN)")
    axes[1].set_xticks(range(len(configs)), [f"{n}\nT={t}, B={b}" for n, t, b in configs], fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default="small_vgg,resnet18", type=lambda s: s.split(","))
    p.add_argument("--timesteps", default="4,8,32", type=_ints)
    p.add_argument("--batches", default="1,32,128", type=_ints)
    p.add_argument("--backends", default=",".join(BACKENDS), type=lambda s: s.split(","),
                   help="snnbridge backends to time; 'torch+compile' times the torch backend with compile: true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recipes", default=",".join(CONVERSION_RECIPES), type=lambda s: [r for r in s.split(",") if r],
                   help="conversion recipes to time (empty: none)")
    p.add_argument("--conversion-timesteps", default="8,32", type=_ints)
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--calib-batch", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="VGG only, T = 8, batches 1 and 32, no conversion timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--measure-peak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure_peak:
        torch.set_num_threads(args.threads)
        _measure_peak(args.measure_peak, torch.device(args.device))
        return
    if args.quick:
        args.networks, args.timesteps, args.batches, args.recipes = ["small_vgg"], [8], [1, 32], []
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = runtime_grid(args, device)
    conversions = conversion_times(args, device) if args.recipes else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "snnbridge": snnbridge.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "loadavg_start": load, "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "rounds": args.rounds, "repeats": args.repeats, "seconds": round(time.perf_counter() - started, 1),
            "command": "python benchmarks/runtime_cost.py " + " ".join(argv if argv is not None else
                                                                     __import__("sys").argv[1:])}
    (out / "runtime_cost.json").write_text(json.dumps({"meta": meta, "runtime": rows, "conversion": conversions},
                                                      indent=2))
    plot(rows, out / "runtime_cost.png", str(device))
    print(f"\nwrote {out / 'runtime_cost.json'} and {out / 'runtime_cost.png'} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
