"""The benchmark suite: every conversion method and the recommended stacks, against SpikingJelly 2.0's converters.

    python -m benchmarks                                   # everything (a day on 2 CPU cores: see the end)
    python -m benchmarks --networks vgg --train-only       # train (or resume) one network, no evaluation
    python -m benchmarks --networks vgg --methods ltb,ltb+ftbc --resume
    python -m benchmarks --smoke                           # tiny random data and nets, under a minute

Networks (:mod:`benchmarks.networks`): the CIFAR-10 example's VGG-style CNN and a CIFAR ResNet-20, each as a ReLU
network and with QCFS activations (L = 4, 8), trained with the example's trainer and cached under
``--checkpoints`` by a hash of their training config (a killed training resumes at its last epoch).

Methods on the ReLU networks: every registered conversion plugin that converts a ReLU network alone (found in
the registry, defaults), and the stacks the README recommends (:data:`RELU_METHODS`); on the QCFS networks
``qcfs`` and its stacks (:data:`QCFS_METHODS`), plus ``qcfs + P`` for any other registered plugin that
stacks on it. Side by side, SpikingJelly 2.0's own ``ann2snn`` converters (``RateCodingRecipe`` max / 99.9 %,
layer- or channel-wise, with half-threshold neurons; ``LocalThresholdBalancingRecipe``, also read out from
``estimate_delay_start``) on the same networks and calibration images (ReLU networks only: SpikingJelly converts
``nn.ReLU`` modules, not QCFS ones).

Every result is the accuracy at T = 1, 2, 4, 8, 16, 32, 64 on the whole test set. A recipe whose result does
not depend on the conversion's T is converted once and read out at every T from one ``snn.sweep`` (exactly what
``snn(x, timesteps=T)`` gives); a T-specific recipe (``PluginInfo.t_specific``, or a choice made for the
conversion's T such as ``ltb``'s ``iterations: auto``) is converted once per T. Each result records the
conversion seconds and the steps actually simulated (``snn.steps_for``: pre-simulation included).

Outputs in ``--out``: ``<date>-<machine>.json`` (saved after every method and T; ``--resume`` continues it),
``<date>-<machine>.md`` (a table per network, the best SNN per T in bold, and the targets) and
``<date>-<machine>-<network>.png`` (accuracy vs T).

Cost, measured on 2 CPU cores: a VGG ReLU epoch takes 91-120 s on idle cores (30 epochs), a QCFS fine-tune
10 epochs; on the VGG to T = 32 over the 10,000 images a sweep takes about 2.5 minutes and SpikingJelly's
converters about 3 each, a per-T recipe 5-10 minutes plus its conversions (``ltb`` 15-19 s per T, ``ltb +
ftbc`` 15-310 s per T on 2,048 images; 2026-12-02 run); T = 64 doubles the sweeps. Run it in parts (``--networks``,
``--methods``, ``--resume``) or on a GPU (``--device cuda``, the default when torch sees one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import snnbridge  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks import networks as nets  # noqa: E402
from examples.cifar10.run import versions  # noqa: E402

RESULTS_FORMAT = 1
TIMESTEPS = (1, 2, 4, 8, 16, 32, 64)
ROBUST = {"robustnorm": {"percentile": 99.9}}
ROBUST_CW = {"robustnorm": {"percentile": 99.9, "channelwise": True}}
#: snn_calibration's advanced preset with the data_driven benchmark's cheaper weight calibration (the defaults,
#: 5,000 Adam iterations per site on 1,024 images, cost about 2.5x more per T)
ADVANCED = {"snn_calibration": {"preset": "advanced", "wc_samples": 512, "wc_iters": 2000}}
#: that weight calibration alone (no BC/PC), for stacking under a threshold source and FTBC
WC_ONLY = {"snn_calibration": {"steps": ["wc"], "wc_samples": 512, "wc_iters": 2000}}


@dataclass(frozen=True)
class Method:
    """A labelled recipe; ``per_t`` forces one conversion per T, with the reason (``why``)."""

    recipe: list
    per_t: bool = False
    why: str = ""


LTB_AUTO = "ltb's iterations: auto picks its K for the conversion's T"
#: the ReLU networks' methods beyond the single registered plugins (README, "Which method when")
RELU_METHODS: dict[str, Method] = {
    "maxnorm": Method(["maxnorm"]),
    "robustnorm": Method([ROBUST]),
    "robustnorm channel-wise": Method([ROBUST_CW]),
    "robustnorm+opi": Method([ROBUST, "opi"]),
    # SpikingJelly's strongest built-in recipe (99.9 %, channel-wise, half threshold) is this one in snnbridge
    "robustnorm channel-wise+opi": Method([ROBUST_CW, "opi"]),
    "robustnorm channel-wise+ftbc": Method([ROBUST_CW, "ftbc"]),
    "snn_calibration": Method(["snn_calibration"]),
    "snn_calibration advanced": Method([ADVANCED]),
    "ltb": Method(["ltb"], per_t=True, why=LTB_AUTO),
    "robustnorm+ftbc": Method([ROBUST, "ftbc"]),
    "ltb+ftbc": Method(["ltb", "ftbc"], per_t=True, why=LTB_AUTO),
    "ltb+snn_calibration": Method(["ltb", "snn_calibration"], per_t=True, why=LTB_AUTO),
    # the best T = 8 stack on held-out ResNet-20 images (benchmarks/option_sweep.py --group weights)
    "ltb+snn_calibration wc+ftbc": Method(["ltb", WC_ONLY, "ftbc"], per_t=True, why=LTB_AUTO),
}
QCFS_METHODS: dict[str, Method] = {
    "qcfs": Method(["qcfs"]),
    "qcfs+cos": Method(["qcfs", "cos"]),
    "qcfs+srp": Method(["qcfs", "srp"]),
    "qcfs+cos+srp": Method(["qcfs", "cos", "srp"]),
    "qcfs+opi(phi=0)": Method(["qcfs", {"opi": {"fraction": 0.0}}]),
    "qcfs+snn_calibration": Method(["qcfs", "snn_calibration"]),
    "qcfs+ftbc": Method(["qcfs", "ftbc"]),
}
#: what --smoke runs when --methods is not given
SMOKE_METHODS = ("robustnorm", "snn_calibration", "qcfs", "qcfs+cos", "SJ RateCoding 99.9%", "SJ LTB")
SMOKE_NETWORKS = ("vgg", "resnet20", "vgg-qcfs4")


# -- which methods run on which network --------------------------------------------------------------------------
def _names(recipe: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in recipe]


def methods_for(network: str) -> tuple[dict[str, Method], dict[str, str]]:
    """(methods to run, skipped plugins with the reason) for a network: the tables above plus every registered
    method plugin that converts this kind of network alone (ReLU) or stacked on ``qcfs`` (QCFS)."""
    qcfs = nets.split_name(network)[1] is not None
    table = dict(QCFS_METHODS if qcfs else RELU_METHODS)
    registry = snnbridge.get_registry()
    if qcfs:  # a plugin already in some stack of the table is covered
        covered = {n for m in table.values() for n in _names(m.recipe)}
    else:  # a plugin is covered when the table runs it alone
        covered = {_names(m.recipe)[0] for m in table.values() if len(m.recipe) == 1}
    skipped: dict[str, str] = {}
    for name in registry.names("method"):
        if name in covered or (qcfs and name == "qcfs"):
            continue
        info = registry.info(name)
        recipe, label = (["qcfs", name], f"qcfs+{name}") if qcfs else ([name], name)
        if "activation" in info.provides:
            skipped[name] = f"needs a network trained with its own activation (snnbridge.prepare(ann, [{name!r}]))"
            continue
        if not qcfs and "quantized_ann" in info.requires:
            skipped[name] = "needs a QCFS-trained network"
            continue
        try:
            snnbridge.build_recipe(recipe)
        except snnbridge.SnnbridgeError as exc:
            skipped[name] = f"{recipe} is not a valid recipe: {str(exc).split('. ')[0]}"
            continue
        table[label] = Method(recipe)
    return table, skipped


def is_per_t(method: Method) -> bool:
    """One conversion per T: a T-specific plugin in the recipe (PluginInfo.t_specific) or a forced choice."""
    return method.per_t or any(e.info.t_specific for e in snnbridge.build_recipe(method.recipe).entries)


# -- evaluation ----------------------------------------------------------------------------------------------------
def run_method(label: str, method: Method, model, calib, test, Ts, args, entry: dict | None, save) -> dict:
    """Accuracy of one method at every T; ``entry`` is a partial result to continue (per-T methods)."""
    per_t = is_per_t(method)
    res = entry if current(entry, method) and not entry.get("error") else {}
    res.update({"recipe": method.recipe, "options": resolved(method.recipe), "kind": "per_T" if per_t else "sweep",
                "complete": False})
    if method.why:
        res["why_per_T"] = method.why
    for key in ("accuracy", "steps_run", "conversion_seconds", "eval_seconds", "notes"):
        res.setdefault(key, {})
    if not per_t:
        t_max = max(Ts)
        t0 = time.perf_counter()
        snn = snnbridge.convert(model, method.recipe, calibration=calib, timesteps=t_max, backend=args.backend,
                                progress=False, seed=args.seed)
        res["conversion_seconds"] = {"all": round(time.perf_counter() - t0, 2)}
        t0 = time.perf_counter()
        curve = common.sweep_curve(snn, test, t_max, args.eval_batch_size, progress=args.progress)
        res["eval_seconds"] = {"all": round(time.perf_counter() - t0, 2)}
        res.update(curve=curve, accuracy={str(t): curve[t - 1] for t in Ts},
                   steps_run={str(t): snn.steps_for(t) for t in Ts},  # T < rho: padded to rho (snn.padded_steps)
                   notes={"all": snn.report.get("notes", [])})
    else:
        for T in Ts:
            if str(T) in res["accuracy"]:
                continue
            t0 = time.perf_counter()
            snn = snnbridge.convert(model, method.recipe, calibration=calib, timesteps=T, backend=args.backend,
                                    progress=False, seed=args.seed)
            res["conversion_seconds"][str(T)] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            res["accuracy"][str(T)] = common.acc_at(snn, test, T, args.eval_batch_size)
            res["eval_seconds"][str(T)] = round(time.perf_counter() - t0, 2)
            res["steps_run"][str(T)] = snn.steps_for(T)
            res["notes"][str(T)] = snn.report.get("notes", [])
            tqdm.write(f"    {label} T={T}: {100 * res['accuracy'][str(T)]:.2f}% "
                       f"(convert {res['conversion_seconds'][str(T)]:.1f} s)")
            save(res)
    res["complete"] = True
    return res


def resolved(recipe) -> list:
    """The recipe with every option spelled out (defaults included), as stored with each result."""
    return json.loads(json.dumps(snnbridge.build_recipe(recipe).to_list()))


def current(entry: dict | None, method: Method) -> bool:
    """Whether a stored result was measured with this method's recipe *and today's plugin defaults*.

    A default that changed since (e.g. cos's rho) makes the stored row stale, so ``--resume``
    measures it again. Results from before options were stored count as current.
    """
    if not entry or entry.get("recipe") != method.recipe:
        return False
    return "options" not in entry or entry["options"] == resolved(method.recipe)


def done(entry: dict | None, Ts) -> bool:
    """Whether a stored result is complete and holds every requested T."""
    return bool(entry) and not entry.get("error") and bool(entry.get("complete")) \
        and all(str(t) in entry.get("accuracy", {}) for t in Ts)


def evaluate_network(name: str, model, meta: dict, data: nets.Data, results: dict, Ts, wanted, args, save) -> None:
    """Every method (and SpikingJelly's converters) on one network, saving after each."""
    test = (data.x_test, data.y_test)
    calib = data.calibration(args.calib_batch, args.device)
    net = results["networks"].get(name)
    if net is None or net.get("training", {}).get("hash") != meta.get("hash"):
        net = results["networks"][name] = {"methods": {}}
    net["training"] = {k: meta.get(k) for k in ("hash", "checkpoint", "epochs_done", "train_seconds",
                                                 "test_accuracy", "commands", "config", "parent_test_accuracy")}
    net["ann_accuracy"] = snnbridge.ann_accuracy(model, common.batches(test, args.eval_batch_size))
    qcfs = nets.split_name(name)[1] is not None
    table, skipped = methods_for(name)
    net["skipped"] = skipped
    sj = [] if qcfs else [lbl for lbl in common.SJ_LABELS if wanted is None or lbl in wanted]
    if qcfs:
        net["skipped"]["SpikingJelly converters"] = ("SpikingJelly's ann2snn converts nn.ReLU modules only, not "
                                                     "QCFS activations")
    todo = [lbl for lbl in table if wanted is None or lbl in wanted]
    tqdm.write(f"  {name}: ANN {100 * net['ann_accuracy']:.2f} %; {len(todo)} snnbridge method(s), "
               f"{len(sj)} SpikingJelly converter(s)")
    bar = tqdm(total=len(todo) + (1 if sj else 0), desc=name, unit="method", disable=not args.progress)
    for label in todo:
        if done(net["methods"].get(label), Ts) and current(net["methods"][label], table[label]):
            bar.update()
            continue
        bar.set_postfix_str(label)

        def partial(res, label=label):
            net["methods"][label] = res
            save()

        try:
            net["methods"][label] = run_method(label, table[label], model, calib, test, Ts, args,
                                               net["methods"].get(label), partial)
        except Exception as exc:  # recorded and shown, the other methods still run
            net["methods"][label] = {"recipe": table[label].recipe, "error": f"{type(exc).__name__}: {exc}"}
        res = net["methods"][label]
        tqdm.write(f"    {label}: " + (f"FAILED {res['error']}" if "error" in res else
                                       "  ".join(f"T={t}: {100 * res['accuracy'][str(t)]:.2f}" for t in Ts)))
        save()
        bar.update()
    sj_todo = [lbl for lbl in sj if not done(net["methods"].get(lbl), Ts)]
    if sj_todo:
        bar.set_postfix_str("SpikingJelly")

        def keep(lbl: str, res: dict) -> None:  # saved per converter: a stopped run keeps the ones done
            res.update(accuracy={str(t): res["curve"][t - 1] for t in Ts}, steps_run={str(t): t for t in Ts},
                       complete=True, recipe=lbl)
            net["methods"][lbl] = res
            save()

        try:
            common.run_spikingjelly(model, calib, test, max(Ts), args.sj_batch_size, sj_todo, log=tqdm.write,
                                    progress=args.progress, on_result=keep)
        except Exception as exc:
            for lbl in sj_todo:
                if not done(net["methods"].get(lbl), Ts):
                    net["methods"][lbl] = {"recipe": lbl, "error": f"{type(exc).__name__}: {exc}"}
            tqdm.write(f"    SpikingJelly: FAILED {type(exc).__name__}: {exc}")
        save()
        bar.update()
    bar.close()
    net["targets"] = targets(name, net, Ts)


# -- targets, tables, plots ------------------------------------------------------------------------------------------
def _best(net: dict, T: int, sj: bool) -> tuple[str | None, float | None]:
    pool = [(lbl, r["accuracy"][str(T)]) for lbl, r in net["methods"].items()
            if "error" not in r and str(T) in r.get("accuracy", {}) and lbl.startswith("SJ ") == sj]
    return max(pool, key=lambda p: p[1]) if pool else (None, None)


def targets(name: str, net: dict, Ts) -> list[dict]:
    """The issue's targets, checked on this network's results (points: percentage points)."""
    ann = net["ann_accuracy"]
    out = []

    def gap(T, limit, what):
        label, acc = _best(net, T, sj=False)
        if acc is not None:
            out.append({"target": f"best snnbridge recipe within {limit} pt of the ANN at T = {T}{what}",
                        "best": label, "gap_pt": round(100 * (ann - acc), 2), "met": 100 * (ann - acc) <= limit})

    if nets.split_name(name)[1] is None:
        gap(8, 1.0, "")
        gap(32, 0.3, "")
        lows = [t for t in Ts if t <= 32]
        pairs = {t: (_best(net, t, False), _best(net, t, True)) for t in lows}
        pairs = {t: (a, b) for t, (a, b) in pairs.items() if a[1] is not None and b[1] is not None}
        if pairs:
            margin = {str(t): round(100 * (a[1] - b[1]), 2) for t, (a, b) in pairs.items()}
            out.append({"target": "best snnbridge recipe ahead of SpikingJelly's best built-in recipe at every "
                                  "T <= 32", "margin_pt": margin, "met": all(v > 0 for v in margin.values())})
    else:
        gap(2, 1.5, " (the QCFS ANN)")
    return out


def _cell(res: dict, T: int) -> str:
    acc = res["accuracy"].get(str(T))
    if acc is None:
        return "-"
    steps = res.get("steps_run", {}).get(str(T), T)
    return f"{100 * acc:.2f}" + ("" if steps == T else f" ({steps})")


def _seconds(res: dict) -> str:
    c = res.get("conversion_seconds", {})
    if "all" in c:
        return f"{c['all']:.1f}"
    return " / ".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in c.values()) or "-"


def _recipe_text(recipe) -> str:
    if isinstance(recipe, str):
        return recipe
    return json.dumps(recipe, separators=(", ", ": ")).replace('"', "")


def _in_table_order(methods: dict) -> list[tuple[str, dict]]:
    """A network's ``(label, result)`` pairs in the suite's order (RELU_METHODS / QCFS_METHODS, then any other
    label, SpikingJelly's last in ``common.SJ_LABELS`` order), whatever order a resumed JSON file holds them in."""
    suite = [*RELU_METHODS, *QCFS_METHODS]

    def rank(label: str) -> tuple[int, int]:
        if label in common.SJ_LABELS:
            return (2, common.SJ_LABELS.index(label))
        return (0, suite.index(label)) if label in suite else (1, 0)

    return sorted(methods.items(), key=lambda kv: rank(kv[0]))


def markdown(results: dict) -> str:
    """The results as Markdown: per network the ANN row, every method and SpikingJelly's converters, the best SNN
    per T in bold, ``(n)`` where more steps than T were simulated; then the targets."""
    Ts = results["config"]["timesteps"]
    lines = [f"# snnbridge benchmark suite, {results['date']} on {results['machine']['slug']}", "",
             f"{results['config']['test_samples']} test images, {results['config']['calib_samples']} calibration "
             f"images (batches of {results['config']['calib_batch']}), backend {results['config']['backend']}. "
             "Accuracy (%) at T counted steps; `(n)`: n steps simulated in all (pre-simulation included). "
             "Conversion seconds per T for T-specific recipes. Bold: the best SNN at that T.", ""]
    for name, net in results["networks"].items():
        tr = net.get("training", {})
        hours = (tr.get("train_seconds") or 0) / 3600
        lines += [f"## {name}", "", f"ANN test accuracy {100 * net['ann_accuracy']:.2f} %; trained "
                  f"{tr.get('epochs_done')} epoch(s), {hours:.2f} h ({Path(tr.get('checkpoint') or '-').name}).", ""]
        lines.append("| method | " + " | ".join(f"T={t}" for t in Ts) + " | conversion s |")
        lines.append("|---|" + "---|" * len(Ts) + "---|")
        lines.append("| ANN | " + " | ".join(f"{100 * net['ann_accuracy']:.2f}" for _ in Ts) + " | - |")
        best = {}
        for t in Ts:
            vals = [r["accuracy"][str(t)] for r in net["methods"].values()
                    if "error" not in r and str(t) in r.get("accuracy", {})]
            best[t] = max(vals) if vals else None
        for label, res in _in_table_order(net["methods"]):
            if "error" in res:
                lines.append(f"| {label} | failed: {res['error'][:150]} |" + " |" * (len(Ts) - 1) + " - |")
                continue
            cells = []
            for t in Ts:
                c = _cell(res, t)
                acc = res["accuracy"].get(str(t))
                cells.append(f"**{c}**" if acc is not None and acc == best[t] else c)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_seconds(res)} |")
        lines.append("")
        for tgt in net.get("targets", []):
            detail = (f"{tgt['best']}: ANN - SNN = {tgt['gap_pt']:+.2f} pt" if "gap_pt" in tgt else
                      "margin (pt) per T: " + ", ".join(f"T={t}: {v:+.2f}" for t, v in tgt["margin_pt"].items()))
            lines.append(f"- {'met' if tgt['met'] else 'NOT met'}: {tgt['target']} ({detail})")
        recipes = [f"{lbl} = `{_recipe_text(r['recipe'])}`" for lbl, r in _in_table_order(net["methods"])
                   if not lbl.startswith("SJ ")]
        if recipes:
            lines.append("- recipes: " + "; ".join(recipes))
        if net.get("skipped"):
            lines.append("- not run: " + "; ".join(f"{k} ({v})" for k, v in net["skipped"].items()))
        lines.append("")
    return "\n".join(lines)


def plot(name: str, net: dict, Ts, path: Path, title: str) -> None:
    """Accuracy vs T of every method on one network: the whole range and a zoom near the ANN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {lbl: r for lbl, r in _in_table_order(net["methods"]) if "error" not in r and r.get("accuracy")}
    ann = 100 * net["ann_accuracy"]
    palette = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, zoom in zip(axes, (False, True)):
        for i, (label, res) in enumerate(ok.items()):
            ts = [t for t in Ts if str(t) in res["accuracy"]]
            sj = label.startswith("SJ ")
            ax.plot(ts, [100 * res["accuracy"][str(t)] for t in ts], "--" if sj else "-",
                    color=palette[i % len(palette)], marker="s" if sj else "o", ms=4, lw=1.3, label=label)
        ax.axhline(ann, color="k", lw=1, label=f"ANN ({ann:.2f} %)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(Ts), [str(t) for t in Ts])
        ax.minorticks_off()
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(ann - 10, ann + 1)
            ax.set_title("zoom: within 10 points of the ANN", fontsize=9)
        else:
            ax.set_ylim(0, 100)
            ax.set_title(title, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7.5, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------------------------------
def machine_slug() -> str:
    """A short name for this machine: system, architecture, CPU count and GPU, e.g. ``linux-x86_64-2cpu``."""
    parts = [platform.system().lower() or "unknown", platform.machine().lower() or "cpu", f"{os.cpu_count()}cpu"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return re.sub(r"[^a-z0-9_.]+", "-", "-".join(parts).lower()).strip("-")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=_Help)
    p.add_argument("--networks", default=None, help=f"comma-separated networks (default: {','.join(nets.NETWORKS)}; "
                                                    f"--smoke: {','.join(SMOKE_NETWORKS)})")
    p.add_argument("--methods", default=None, help="comma-separated method labels, or all (default: all; --smoke: "
                                                   f"{','.join(SMOKE_METHODS).replace('%', '%%')}; SpikingJelly "
                                                   f"labels: {', '.join(common.SJ_LABELS).replace('%', '%%')})")
    p.add_argument("--timesteps", default=None, help=f"default: {','.join(map(str, TIMESTEPS))}; --smoke: 1,2,4")
    p.add_argument("--test-samples", type=int, default=None, help="random test images (default: all 10,000)")
    p.add_argument("--calib-samples", type=int, default=2048, help="random training images for calibration")
    p.add_argument("--calib-batch", type=int, default=128, help="calibration batch size")
    p.add_argument("--eval-batch-size", type=int, default=200, help="test images per snnbridge SNN run")
    p.add_argument("--sj-batch-size", type=int, default=50, help="test images per SpikingJelly run (it repeats the "
                                                                 "input T times)")
    p.add_argument("--backend", default="torch", help="neuron backend (all give identical spikes)")
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: the example's lookup)")
    p.add_argument("--checkpoints", default=None, help="trained networks, the cache (default: benchmarks/checkpoints; "
                                                       "--smoke: a new temporary folder)")
    p.add_argument("--epochs", type=int, default=nets.Training.epochs, help="epochs of the ReLU networks")
    p.add_argument("--qcfs-epochs", type=int, default=nets.Training.qcfs_epochs,
                   help="epochs of the QCFS networks fine-tuned from their ReLU network")
    p.add_argument("--qcfs-init", default="relu", choices=("relu", "scratch"),
                   help="QCFS networks: fine-tune the trained ReLU network, or train from scratch (--epochs)")
    p.add_argument("--train-only", action="store_true", help="only train (or load) the networks")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results; --smoke: a new "
                                               "temporary folder)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="JSON",
                   help="continue a results file (default: this machine's newest in --out), skipping finished work")
    p.add_argument("--seed", type=int, default=0, help="seeds training, the data subsets and the conversions")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when torch sees a GPU, else cpu); "
                                                  "training and evaluation run there")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2; --smoke: 1, its tiny "
                                                              "networks gain nothing from more)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="tiny random data and networks, 1 epoch, T up to 4, a few "
                                                        "methods, checkpoints in a temporary folder")
    return p


def _list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    """Run the suite (see the module docstring and ``python -m benchmarks --help``); returns the results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet = "--no-progress" in argv
    before = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # SpikingJelly's own bars too
    threads = torch.get_num_threads()  # _main sets its own; a caller (a test, a notebook) gets its count back
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads)
        if quiet:
            os.environ.pop("TQDM_DISABLE", None) if before is None else os.environ.update(TQDM_DISABLE=before)


def _main(argv: list[str]) -> dict:
    p = build_parser()
    args = p.parse_args(argv)
    args.progress = not args.no_progress
    torch.set_num_threads(max(1, args.threads or (1 if args.smoke else 2)))
    command = " ".join(["python -m benchmarks", *argv]).strip()
    started = time.perf_counter()
    training = nets.Training(epochs=args.epochs, qcfs_epochs=args.qcfs_epochs, qcfs_init=args.qcfs_init,
                             seed=args.seed)
    if args.smoke:
        args.timesteps = args.timesteps or "1,2,4"
        args.networks = args.networks or ",".join(SMOKE_NETWORKS)
        args.methods = args.methods or ",".join(SMOKE_METHODS)
        args.calib_batch = min(args.calib_batch, 32)
        training = replace(training, epochs=1, qcfs_epochs=1, batch_size=32, archs=nets.SMOKE_ARCHS)
    args.timesteps = args.timesteps or ",".join(map(str, TIMESTEPS))
    args.networks = args.networks or ",".join(nets.NETWORKS)
    try:
        Ts = sorted({int(t) for t in _list(args.timesteps)})
    except ValueError:
        p.error(f"--timesteps takes comma-separated whole numbers, got {args.timesteps!r}")
    if not Ts or Ts[0] < 1:
        p.error("--timesteps needs positive whole numbers")
    names = _list(args.networks)
    for n in names:
        nets.split_name(n)
    wanted = set(_list(args.methods)) if args.methods and args.methods != "all" else None
    if wanted:
        known = {lbl for n in names for lbl in methods_for(n)[0]} | set(common.SJ_LABELS)
        unknown = sorted(wanted - known)
        if unknown:
            p.error(f"unknown method label(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    if args.backend not in snnbridge.get_registry().names("backend"):
        p.error(f"backend {args.backend!r} is not installed; installed: "
                f"{', '.join(snnbridge.get_registry().names('backend'))}")

    if args.smoke and not (args.checkpoints and args.out):
        tmp = Path(tempfile.mkdtemp(prefix="snnbridge-smoke-"))
        args.checkpoints = args.checkpoints or str(tmp / "checkpoints")
        args.out = args.out or str(tmp / "results")
    args.checkpoints = args.checkpoints or "benchmarks/checkpoints"
    args.out = args.out or "benchmarks/results"

    print(f"data: {'tiny random (smoke)' if args.smoke else 'CIFAR-10'}", flush=True)
    data = (nets.smoke(args.seed, n_calib=max(64, min(args.calib_samples, 256))) if args.smoke else
            nets.cifar10(args.test_samples, args.calib_samples, args.seed, args.data, args.progress))
    models = {}
    print(f"networks: {', '.join(names)} (checkpoints in {args.checkpoints})", flush=True)
    for n in names:
        models[n] = nets.obtain(n, training, data, args.checkpoints, command=command, progress=args.progress,
                                log=tqdm.write, device=args.device)
    if args.train_only:
        return {"networks": {n: meta for n, (_, meta) in models.items()}}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = machine_slug()
    path = out / f"{time.strftime('%Y-%m-%d')}-{slug}.json"
    config = {"timesteps": Ts, "test_samples": len(data.x_test), "calib_samples": len(data.x_calib),
              "calib_batch": args.calib_batch, "backend": args.backend, "seed": args.seed, "data": data.ident,
              "eval_batch_size": args.eval_batch_size, "threads": torch.get_num_threads(), "smoke": args.smoke,
              "device": args.device,
              "training": nets.describe(training)}
    results = None
    if args.resume:
        src = Path(args.resume) if args.resume != "latest" else max(out.glob(f"*-{slug}.json"), default=None)
        if src is not None and src.is_file():
            results = json.loads(src.read_text())
            keep = ("test_samples", "calib_samples", "calib_batch", "backend", "seed", "data")
            if results.get("format") != RESULTS_FORMAT or any(results["config"].get(k) != config[k] for k in keep):
                p.error(f"--resume {src}: that run used other settings ({ {k: results['config'].get(k) for k in keep} }"
                        f" vs { {k: config[k] for k in keep} }); start a new one without --resume")
            path = src
            results["config"]["timesteps"] = sorted(set(results["config"]["timesteps"]) | set(Ts))
            results.setdefault("commands", []).append(command)
            print(f"resuming {src}", flush=True)
        else:
            print(f"--resume: no earlier results for {slug} in {out}; starting a new file", flush=True)
    if results is None:
        results = {"format": RESULTS_FORMAT, "suite": "snnbridge benchmark suite (python -m benchmarks)",
                   "date": time.strftime("%Y-%m-%d"), "commands": [command], "config": config, "networks": {}}
    results["machine"] = {**nets.machine(), "slug": slug}
    results["versions"] = versions()

    def save():
        results["seconds_last_invocation"] = round(time.perf_counter() - started, 1)
        tmp_path = path.with_name(path.name + ".tmp")
        tmp_path.write_text(json.dumps(results, indent=1))
        os.replace(tmp_path, path)

    for n in names:
        model, meta = models[n]
        evaluate_network(n, model, meta, data, results, Ts, wanted, args, save)
        save()
    stem = path.with_suffix("")
    md = stem.with_suffix(".md")
    md.write_text(markdown(results))
    pngs = []
    for n, net in results["networks"].items():
        png = Path(f"{stem}-{n}.png")
        plot(n, net, results["config"]["timesteps"], png,
             f"{n}: CIFAR-10{' (smoke data)' if args.smoke else ''}, {results['config']['test_samples']} test images")
        pngs.append(png)
    save()
    print(markdown(results))
    print(f"wrote {path}, {md} and {', '.join(str(p) for p in pngs)} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return {**results, "paths": {"json": str(path), "markdown": str(md), "png": [str(p) for p in pngs]}}


if __name__ == "__main__":
    main()
