"""Plots people would rather see than tables, each written next to a machine-readable JSON.

Everything here draws with matplotlib's object API (``Figure`` + the Agg canvas), so no
global backend is switched and nothing opens a window.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")


def plugin_defaults(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each installed plugin's option defaults (plugins that are not installed are left out)."""
    from .errors import SnnbridgeError
    from .plugin_manager import get_registry

    registry = get_registry()
    out = {}
    for name in names:
        try:
            out[name] = {o.name: o.default for o in registry.options(name) if not o.required}
        except SnnbridgeError:  # not installed here: all its options are shown
            continue
    return out


def recipe_label(recipe: Sequence[Any], defaults: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The recipe as a reader wants it in a title: names, with only the options that differ from the defaults.

    ``[{"robustnorm": {"percentile": 99.5, "channelwise": False}}, {"ftbc": {...defaults}}]``
    gives ``"robustnorm (percentile 99.5) + ftbc"``. ``defaults`` maps plugin names to their
    option defaults (default: the installed plugins', :func:`plugin_defaults`).
    """
    entries = []
    for entry in recipe:
        items = entry.items() if isinstance(entry, Mapping) else [(str(entry), {})]
        entries += [(str(name), dict(opts or {})) for name, opts in items]
    if defaults is None:
        defaults = plugin_defaults([name for name, _ in entries])
    parts = []
    for name, opts in entries:
        known = defaults.get(name, {})
        changed = [f"{k} {_short(v)}" for k, v in opts.items() if k not in known or known[k] != v]
        parts.append(name + (f" ({', '.join(changed)})" if changed else ""))
    return " + ".join(parts) or "(empty recipe)"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def run_title(recipe: Sequence[Any], backend: str, timesteps: int, what: str = "SNN accuracy vs T",
              defaults: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A two-line title: what is shown and the recipe (non-default options only), then backend and T."""
    return f"{what}: {recipe_label(recipe, defaults)}\n{backend} backend, converted for T = {timesteps}"


def _wrap(text: str, width: int) -> str:
    """Wrap every line of ``text`` separately (explicit line breaks are kept)."""
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_accuracy(curves: Sequence[dict[str, Any]], path: str | Path, *, ann_accuracy: float | None = None,
                  title: str = "SNN accuracy vs time steps", xlabel: str = "counted time steps T",
                  note: str | None = None) -> Path:
    """Accuracy (fractions, drawn in %) against T for one or more curves; returns the written path.

    Each curve is ``{"label", "timesteps", "accuracy"}`` with optional ``"group"`` (same
    colour) and ``"variant"`` (same line style and marker) indices, and ``"marks"`` (the T
    values to mark; default all). ``ann_accuracy`` draws the ANN as a dashed line.
    """
    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    all_t: set[int] = set()
    for i, c in enumerate(curves):
        ts, acc = list(c["timesteps"]), [100 * a for a in c["accuracy"]]
        all_t |= set(ts)
        g, v = c.get("group", i), c.get("variant", 0)
        marks = set(c.get("marks", ts))
        ax.plot(ts, acc, color=COLORS[g % len(COLORS)], linestyle=STYLES[v % len(STYLES)],
                marker=MARKERS[v % len(MARKERS)], markevery=[k for k, t in enumerate(ts) if t in marks],
                markersize=5, linewidth=1.4, alpha=0.9, label=c["label"])
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="black", linestyle="--", linewidth=1.2,
                   label=f"ANN ({100 * ann_accuracy:.1f}%)")
    if all_t and max(all_t) / max(1, min(all_t)) >= 8:
        ax.set_xscale("log", base=2)
        ticks = sorted({2 ** k for k in range(int(math.log2(max(all_t))) + 1)} | set(t for c in curves
                                                                                     for t in c.get("marks", [])))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    if all_t:
        ax.set_xlim(min(all_t), max(all_t))
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_wrap(title, 70), fontsize=10)
    if note:
        ax.text(0.02, 0.97, textwrap.fill(note, 90), transform=ax.transAxes, fontsize=8, va="top", color="0.3")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def layer_report_title(report: dict) -> str:
    """The title of a layer report plot: what it shows, the recipe (non-default options), backend and T."""
    head = "Where the SNN loses, per site"
    if report.get("recipe"):
        head += f": {recipe_label(report['recipe'])}"
    steps = f", {report['steps_run']} steps run" if report.get("steps_run") not in (None, report["timesteps"]) else ""
    return f"{head}\n{report['backend']} backend, T = {report['timesteps']}{steps}"


def plot_layer_report(report: dict, path: str | Path) -> tuple[Path, Path]:
    """Save :func:`snnbridge.layer_report`'s report as ``<path>.json`` and a three-panel ``<path>.png``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = path.with_suffix(".json"), path.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=2))
    _save(layer_report_figure(report), png_path)
    return json_path, png_path


def layer_report_figure(report: dict):
    """Three panels sharing the site axis: the error split, the firing rate, the fraction of silent neurons.

    Each quantity has its own panel and y axis (a silent fraction drawn on the firing-rate
    panel's twin axis reads as a rate); the title is wrapped to the figure's width.
    """
    sites = report["sites"]
    idx = list(range(len(sites)))
    width = max(6.5, 0.45 * len(sites) + 2)
    fig = _figure(width, 8)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    ax1.bar(idx, [s["clip_error"] for s in sites], label="clipping error")
    ax1.bar(idx, [s["quant_error"] for s in sites], bottom=[s["clip_error"] for s in sites],
            label="quantization + unevenness error")
    ax1.plot(idx, [s["error"] for s in sites], "k.", label="|SNN rate - ANN|")
    ax1.set_ylabel("mean error\n(activation units)")
    ax1.legend(fontsize=8)
    ax1.set_title(_wrap(layer_report_title(report), int(width * 10)), fontsize=10)
    ax2.bar(idx, [s["firing_rate"] for s in sites], color="tab:green")
    ax2.set_ylabel("firing rate\n(spikes / neuron / step)")
    ax3.bar(idx, [s["silent"] for s in sites], color="tab:red")
    ax3.set_ylim(0, 1)
    ax3.set_ylabel("silent neurons\n(fraction)")
    ax3.set_xticks(idx, [s["site"] for s in sites], rotation=60, ha="right", fontsize=7)
    for ax in (ax1, ax2, ax3):
        ax.grid(True, axis="y", alpha=0.3)
    return fig
