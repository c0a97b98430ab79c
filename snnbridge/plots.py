"""Plots people would rather see than tables, each written next to a machine-readable JSON.

Everything here draws with matplotlib's object API (``Figure`` + the Agg canvas), so no
global backend is switched and nothing opens a window.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")


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
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    if note:
        ax.text(0.02, 0.97, textwrap.fill(note, 90), transform=ax.transAxes, fontsize=8, va="top", color="0.3")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_layer_report(report: dict, path: str | Path) -> tuple[Path, Path]:
    """Save :func:`snnbridge.layer_report`'s report as ``<path>.json`` and a two-panel ``<path>.png``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = path.with_suffix(".json"), path.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=2))
    sites = report["sites"]
    idx = list(range(len(sites)))
    fig = _figure(max(6.5, 0.45 * len(sites) + 2), 6.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.bar(idx, [s["clip_error"] for s in sites], label="clipping error")
    ax1.bar(idx, [s["quant_error"] for s in sites], bottom=[s["clip_error"] for s in sites],
            label="quantization + unevenness error")
    ax1.plot(idx, [s["error"] for s in sites], "k.", label="|SNN rate - ANN|")
    ax1.set_ylabel("mean error\n(activation units)")
    ax1.legend(fontsize=8)
    ax1.set_title(f"Where the SNN loses, per site (T = {report['timesteps']}, {report['steps_run']} steps run, "
                  f"{report['backend']})", fontsize=10)
    ax2.bar(idx, [s["firing_rate"] for s in sites], color="tab:green", label="firing rate")
    ax2.set_ylabel("spikes / neuron / step", color="tab:green")
    silent = ax2.twinx()
    silent.plot(idx, [s["silent"] for s in sites], "r.-", label="silent neurons")
    silent.set_ylim(0, 1)
    silent.set_ylabel("fraction of silent neurons", color="tab:red")
    ax2.set_xticks(idx, [s["site"] for s in sites], rotation=60, ha="right", fontsize=7)
    _save(fig, png_path)
    return json_path, png_path
