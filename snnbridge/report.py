"""The conversion report: what a researcher publishes about one converted SNN.

``snnbridge.report(ann, snn, data, out="report/")`` runs the SNN once per batch of ``data``
and gives, as one JSON-ready dict (and, with ``out``, ``report.json`` plus one self-contained
``report.html`` page with the plots embedded, and the plots as PNG files):

* per site (:mod:`snnbridge.diagnose`): the threshold (scalar, or per-channel min / median /
  max), the firing rate, the silent neurons (never firing on the data), the ANN-vs-SNN error
  split into clipping error (the ANN activation above the threshold) and quantization error
  (the rest, with T steps; unevenness and upstream errors included), the offset spikes
  (extra / missing spikes against the ANN activation's T-step count, Hao et al.'s notion),
  and each site's share of the total error;
* accuracy against T from one ``sweep`` per batch (:func:`snnbridge.accuracy_curve`), next to
  the ANN's accuracy on the same images;
* synaptic operations and energy (:func:`snnbridge.energy`, on the first batch).

Definitions, as in the error analyses of Bu et al. (QCFS, ICLR 2022,
github.com/putshua/SNN_conversion_QCFS) and Hao et al. (COS, ICLR 2023,
github.com/hzc1208/ANN2SNN_COS), for an ANN activation ``a``, the SNN's mean output ``r``
over the T counted steps (``r <= theta``) and the spike count ``N = r T / theta``::

    error       = mean |r - a|                   = clip_error + quant_error  (exact per neuron)
    clip_error  = mean relu(a - theta)
    quant_error = mean |r - min(a, theta)|
    psi         = N - floor(min(a, theta) T / theta + 1/2)   (offset spikes; > 0 extra, < 0 missing)
    share       = relative_error / sum over sites of relative_error   (relative: over the mean of a)

The page references nothing outside itself (no URL, no script, no font to fetch), so it can
be mailed, archived or attached to a paper's supplement as one file.
"""

from __future__ import annotations

import base64
import datetime
import html
import itertools
import json
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batches import is_labels, is_whole_pair, split_item
from .diagnose import SiteProbe
from .errors import InputError, SnnbridgeError
from .evaluate import accuracy_curve, default_timesteps
from .runtime import SpikingModel

FORMAT = "snnbridge-report"
FORMAT_VERSION = 1

DEFINITIONS = (
    ("threshold", "the site's firing threshold theta: one value, or min / median / max over its channels."),
    ("firing rate", "spikes per neuron per counted step, averaged over the site's neurons and the samples."),
    ("silent", "fraction of the site's neurons (positions C x ...) that never fire on any sample of the data."),
    ("error", "mean |r - a| between the SNN's mean output r over the T counted steps and the ANN activation a "
              "(activation units); error = clipping + quantization, exactly, because r <= theta."),
    ("clipping error", "mean relu(a - theta): the part of the ANN activation above the threshold, which no firing "
                       "rate can represent (Bu et al., QCFS, ICLR 2022)."),
    ("quantization error", "mean |r - min(a, theta)|: the rest, from the T-step grid of rates (flooring / rounding), "
                           "uneven input spikes and what upstream sites passed on."),
    ("offset spikes", "psi = N - N*, the spike count N against N* = floor(min(a, theta) T / theta + 1/2), the count "
                      "of the T-step rate code closest to a (for a QCFS ANN with L = T: the ANN's rate times T; Hao "
                      "et al., COS, ICLR 2023). Extra: psi > 0; missing: psi < 0 (fractions of neurons)."),
    ("share", "the site's relative error (error over the mean ANN activation) as a fraction of the sum over all "
              "sites; errors accumulate downstream, so a share says where the mismatch is seen."),
    ("SynOps", "synaptic operations: accumulates driven by spikes, counted from the spikes of the run "
               "(snnbridge.energy; energy per operation after Horowitz, ISSCC 2014)."),
)


# =============================================================================================
# data
# =============================================================================================


def _item(item: Any, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    x, y = split_item(item)
    if x is None:
        raise InputError(f"report data item {i + 1} is a {type(item).__name__}; give a DataLoader or iterable of "
                         "(images, labels) batches (or of input tensors, for a report without accuracy).")
    return x, y


def _batches(data: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, labels or None)`` per batch: a tensor or an ``(x, y)`` pair is one batch; else an iterable of batches."""
    if isinstance(data, torch.Tensor):
        yield data, None
        return
    if is_whole_pair(data):
        yield data[0], data[1]
        return
    try:
        items = iter(data)
    except TypeError:
        raise InputError(f"report data is a {type(data).__name__}; give a DataLoader or iterable of (images, labels) "
                         "batches, one (images, labels) pair, or an input tensor.") from None
    for i, item in enumerate(items):
        yield _item(item, i)


# =============================================================================================
# the report
# =============================================================================================


def _energy_function(costs: str | Mapping[str, Any] | None):
    """``x, T -> snnbridge.energy(snn, x, T, costs=costs)`` (costs checked now), or None (no energy part)."""
    if costs is None:
        return None
    try:
        from .energy import energy, resolve_costs
    except ImportError:  # pragma: no cover - an snnbridge without snnbridge.energy
        return None
    resolve_costs(costs)  # a bad preset is an OptionError before any work

    def count(snn: SpikingModel, x: torch.Tensor, timesteps: int) -> dict[str, Any]:
        return energy(snn, x, timesteps=timesteps, costs=costs)
    return count


class _Run:
    """What the batches of one report add up to besides the per-site statistics."""

    def __init__(self):
        self.samples = 0
        self.batches = 0
        self.ann_correct = 0
        self.labelled: bool | None = None
        self.energy: dict[str, Any] | None = None
        self.energy_error: str | None = None


def _observe(batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], probe: SiteProbe, T: int, run: _Run,
             energy) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield each batch to whoever runs the SNN on it (``accuracy_curve``'s sweep) inside a recording, then add
    the recording and the ANN's activations to ``probe``: one SNN run per batch serves both."""
    for x, y in batches:
        labelled = y is not None
        if run.labelled is None:
            run.labelled = labelled
        elif run.labelled != labelled:
            raise InputError(f"report batch {run.batches + 1} {'has' if labelled else 'lacks'} labels and the first "
                             f"{'lacks' if labelled else 'has'} them; give labels with every batch or with none.")
        if y is not None and not is_labels(y, x):
            raise InputError(f"report batch {run.batches + 1}: labels must be a 1-D integer tensor with one class "
                             f"index per image, got {y.dtype} of shape {list(y.shape)}.")
        x = x.to(probe.device)
        logits, acts = probe.ann_forward(x)
        if logits is not None and y is not None:
            run.ann_correct += int((logits.argmax(-1).cpu() == y.cpu()).sum())
        with probe.recording() as rec:
            yield x, y
        if not rec.runs:
            raise InputError("the SNN did not run on a report batch")  # pragma: no cover - our own consumers run it
        probe.add(rec, acts, T)
        if run.batches == 0 and energy is not None:
            try:
                run.energy = energy(probe.snn, x, timesteps=T)
            except SnnbridgeError as exc:  # e.g. a layer it cannot count: said in the report and warned, not hidden
                run.energy_error = str(exc)
        run.samples += int(x.shape[0])
        run.batches += 1


def _timesteps(snn: SpikingModel, timesteps: int | Sequence[int] | None) -> list[int]:
    if timesteps is None:
        return default_timesteps(snn.timesteps)
    if isinstance(timesteps, int):
        if isinstance(timesteps, bool) or timesteps < 1:
            raise InputError(f"timesteps must be a positive T or a list of T values, got {timesteps!r}.")
        steps = default_timesteps(timesteps)
    else:
        try:
            steps = sorted({int(t) for t in timesteps})
        except (TypeError, ValueError):
            raise InputError(f"timesteps must be a T or a list of T values, got {timesteps!r}.") from None
    if not steps or steps[0] < 1:
        raise InputError(f"timesteps must be positive whole numbers, got {timesteps!r}.")
    return steps


@torch.no_grad()
def report(ann: nn.Module | None, snn: SpikingModel, data: Any, *, timesteps: int | Sequence[int] | None = None,
           out: str | Path | None = None, progress: bool = False, about: Mapping[str, Any] | None = None,
           costs: str | Mapping[str, Any] | None = "fp32_45nm") -> dict[str, Any]:
    """The conversion report of ``snn`` against ``ann`` on ``data`` (see the module docstring); JSON-ready.

    :param ann: the ANN ``snn`` was converted from (traced as a copy, never changed), or None:
        then the comparisons (errors, offset spikes, shares, ANN accuracy) are None.
    :param data: a DataLoader or iterable of ``(images, labels)`` batches (or of input
        tensors, or one tensor: no accuracy then).
    :param timesteps: the T values of the accuracy curve (a list), or a T (then 1, 2, 4 ...
        up to it); default: up to ``snn.timesteps``. Everything else is measured at the largest.
    :param out: a folder: ``report.json``, ``report.html`` and the plots' PNG files go there.
    :param progress: show a progress bar over the batches.
    :param about: plain facts to show in the page's header and keep under ``"about"``
        (e.g. ``{"data": "cifar10/test", "model": "vgg16"}``).
    :param costs: the energy per operation of the SynOps part (:func:`snnbridge.energy`'s
        ``costs``: ``"fp32_45nm"``, ``"fp16_45nm"``, ``"int8_45nm"`` or a dict of pJ), or None to
        leave that part out (it runs the SNN once more, on the first batch).
    :returns: ``{"sites": [...], "accuracy": {...} or None, "energy": {...} or None, ...}``;
        with ``out``, ``"files"`` lists what was written.
    """
    if not isinstance(snn, SpikingModel):
        raise InputError(f"snnbridge.report takes a converted model (what snnbridge.convert or snnbridge.load return), "
                         f"got {type(snn).__name__}.")
    started = time.perf_counter()
    steps = _timesteps(snn, timesteps)
    T = steps[-1]
    probe = SiteProbe(ann, snn)
    energy_fn = _energy_function(costs)
    run = _Run()
    stream = _batches(data)
    first = next(stream, None)
    if first is None:
        raise InputError("the report data yielded no batch; pass a non-empty DataLoader or a tensor.")
    batches = _observe(itertools.chain([first], stream), probe, T, run, energy_fn)
    accuracy: dict[str, Any] | None = None
    if first[1] is not None:
        accuracy = accuracy_curve(snn, batches, steps, device=probe.device, progress=progress)
        accuracy["ann_accuracy"] = run.ann_correct / run.samples if ann is not None else None
    else:
        from .corrections import check_runnable

        check_runnable(snn, T)
        for x, _ in batches:
            snn.run(x, T)
    if energy_fn is None:
        energy: dict[str, Any] = {"available": False, "reason": "not asked for (costs=None)" if costs is None else
                                  "this snnbridge has no snnbridge.energy"}
    elif run.energy_error is not None:
        warnings.warn(f"snnbridge.report: the SynOps count failed ({run.energy_error}); the report has no energy part.",
                      stacklevel=2)
        energy = {"available": False, "reason": f"snnbridge.energy failed: {run.energy_error}"}
    else:
        energy = {"available": True, "samples": int(first[0].shape[0]), **(run.energy or {})}
    from . import __version__

    result: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "snnbridge_version": __version__,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "about": json.loads(json.dumps(dict(about or {}), default=str)),
        "recipe": list(snn.recipe), "backend": snn.backend_name, "timesteps": snn.timesteps, "measured_at": T,
        "steps_run": snn.steps_for(T), "warmup": snn.warmup, "lookahead": snn.lookahead,
        "samples": run.samples, "batches": run.batches, "with_ann": probe.compared,
        "not_compared": probe.not_compared,
        "sites": probe.results(), "accuracy": accuracy, "energy": energy,
        "conversion": {"notes": list((snn.report or {}).get("notes") or []),
                       "graph": dict((snn.report or {}).get("graph") or {})},
        "definitions": dict(DEFINITIONS),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if out is not None:
        result["files"] = write_report(result, out)
    return json.loads(json.dumps(result, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# =============================================================================================
# files: JSON, PNG plots, one HTML page
# =============================================================================================


def write_report(rep: dict[str, Any], out: str | Path) -> dict[str, str]:
    """Write ``report.json``, the plots (PNG) and ``report.html`` (the plots embedded) into the folder ``out``."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"out={str(folder)!r} is a file; give a folder (report.json, report.html and the plots go "
                         "there).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the report folder {str(folder)!r}: {exc.strerror or exc}.") from exc
    from .plots import _save

    images: dict[str, Path] = {}
    for name, fig in _figures(rep):
        images[name] = _save(fig, folder / f"{name}.png")
    files = {"json": str(folder / "report.json"), "html": str(folder / "report.html"),
             **{f"{k}_png": str(p) for k, p in images.items()}}
    body = json.loads(json.dumps({**rep, "files": files}, default=_plain))
    (folder / "report.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    embedded = {k: base64.b64encode(p.read_bytes()).decode("ascii") for k, p in images.items()}
    (folder / "report.html").write_text(render_html(body, embedded), encoding="utf-8")
    return files


def _figures(rep: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, matplotlib Figure) of every plot the report has data for."""
    from .plots import layer_report_figure, recipe_label, run_title

    figs: list[tuple[str, Any]] = []
    acc = rep.get("accuracy")
    if acc:
        figs.append(("accuracy", _accuracy_figure(rep, acc, run_title(rep["recipe"], rep["backend"],
                                                                      rep["timesteps"]))))
    sites = rep["sites"]
    if sites and rep["with_ann"]:
        figs.append(("sites", layer_report_figure({**rep, "timesteps": rep["measured_at"]})))
        figs.append(("offsets", _offset_figure(sites, recipe_label(rep["recipe"]), rep["measured_at"])))
    elif sites:
        figs.append(("sites", _rate_figure(sites)))
    layers = [layer for layer in (rep.get("energy") or {}).get("layers") or []
              if any(float(layer.get(k) or 0) > 0 for k in ("synops", "macs", "ann_macs"))]
    if layers:
        figs.append(("energy", _energy_figure(layers)))
    return figs


def _accuracy_figure(rep: dict[str, Any], acc: dict[str, Any], title: str):
    from .plots import _figure

    curve = acc["curve"]
    ts = list(range(1, len(curve) + 1))
    fig = _figure(7, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ts, [100 * a for a in curve], color="#1f77b4", linewidth=1.4, label=f"SNN ({rep['backend']})")
    ax.plot(acc["timesteps"], [100 * a for a in acc["accuracy"]], "o", color="#1f77b4", markersize=5)
    if acc.get("ann_accuracy") is not None:
        ax.axhline(100 * acc["ann_accuracy"], color="black", linestyle="--", linewidth=1.2,
                   label=f"ANN ({100 * acc['ann_accuracy']:.1f}%)")
    if len(ts) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(acc["timesteps"], [str(t) for t in acc["timesteps"]])
        ax.minorticks_off()
    ax.set_xlim(1, max(ts[-1], 2))
    ax.set_ylim(0, 100)
    ax.set_xlabel("counted time steps T")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}; {acc['samples']} images", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _offset_figure(sites: list[dict[str, Any]], label: str, T: int):
    from .plots import _figure

    idx = list(range(len(sites)))
    fig = _figure(max(6.5, 0.45 * len(sites) + 2), 5.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.bar(idx, [100 * (s["share"] or 0) for s in sites], color="#8c564b")
    ax1.set_ylabel("share of the\ntotal error (%)")
    ax1.set_title(f"Error share and offset spikes per site, T = {T}\n{label}", fontsize=10)
    ax2.bar(idx, [100 * s["offset_spikes"]["extra"] for s in sites], color="#2ca02c", label="extra spikes (psi > 0)")
    ax2.bar(idx, [-100 * s["offset_spikes"]["missing"] for s in sites], color="#d62728",
            label="missing spikes (psi < 0)")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_ylabel("neurons (%)")
    ax2.legend(fontsize=8)
    ax2.set_xticks(idx, [s["site"] for s in sites], rotation=60, ha="right", fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def _rate_figure(sites: list[dict[str, Any]]):
    from .plots import _figure

    idx = list(range(len(sites)))
    fig = _figure(max(6.5, 0.45 * len(sites) + 2), 5.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.bar(idx, [s["firing_rate"] for s in sites], color="tab:green")
    ax1.set_ylabel("firing rate\n(spikes / neuron / step)")
    ax1.set_title("Firing rates and silent neurons per site (no error split: not compared with the ANN)",
                  fontsize=10)
    ax2.bar(idx, [s["silent"] for s in sites], color="tab:red")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("silent neurons\n(fraction)")
    ax2.set_xticks(idx, [s["site"] for s in sites], rotation=60, ha="right", fontsize=7)
    return fig


def _energy_figure(layers: list[dict[str, Any]]):
    from .plots import _figure

    idx = list(range(len(layers)))
    fig = _figure(max(6.5, 0.45 * len(layers) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    w = 0.4
    for k, (key, color, label) in enumerate((("ann_macs", "#7f7f7f", "ANN MACs"), ("synops", "#ff7f0e", "SNN SynOps"),
                                             ("macs", "#9467bd", "SNN MACs"))):
        values = [float(layer.get(key) or 0) for layer in layers]
        if any(values):
            ax.bar([i + (k - 1) * w / 1.5 for i in idx], values, width=w / 1.5, color=color, label=label)
    ax.set_yscale("symlog")
    ax.set_ylabel("operations per sample")
    ax.set_title("Operations per layer: the ANN's MACs against the SNN's synaptic operations", fontsize=10)
    ax.set_xticks(idx, [str(layer.get("name", i)) for i, layer in enumerate(layers)], rotation=60, ha="right",
                  fontsize=7)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# -- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; text-align: right; }
td { white-space: nowrap; }
.wide { overflow-x: auto; }
th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
dt { font-weight: 600; margin-top: 0.5em; }
dd { margin-left: 1.5em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return _e(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _threshold_text(th: Any) -> str:
    if isinstance(th, dict):
        return f"{_num(th['min'])} / {_num(th['median'])} / {_num(th['max'])} ({th['channels']} ch.)"
    return _num(th)


_LEFT = ' class="l"'


def _table(head: Sequence[str] | None, rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """An HTML table (``head``: column titles, or None); the first ``left`` columns are left-aligned text, cells
    are given already escaped."""
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f"<{tag}{_LEFT if i < left else ''}>{v}</{tag}>" for i, v in enumerate(values))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    thead = f"<thead><tr>{cells('th', [_e(h) for h in head])}</tr></thead>" if head else ""
    return f'<div class="wide"><table>{thead}<tbody>{body}</tbody></table></div>'


def _img(embedded: Mapping[str, str], name: str, alt: str) -> str:
    if name not in embedded:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{embedded[name]}">'


def render_html(rep: dict[str, Any], embedded: Mapping[str, str]) -> str:
    """The report as one HTML page; ``embedded`` maps plot names to base64 PNG data (inlined as ``data:`` images)."""
    from .plots import recipe_label

    acc, sites, energy = rep.get("accuracy"), rep["sites"], rep.get("energy") or {}
    facts = [("recipe", _e(recipe_label(rep["recipe"]))), ("backend", _e(rep["backend"])),
             ("converted for T", _num(rep["timesteps"])), ("measured at T", _num(rep["measured_at"])),
             ("steps run", _num(rep["steps_run"]) + (f" (warm-up {rep['warmup']}, look-ahead {rep['lookahead']})"
                                                      if rep["warmup"] or rep["lookahead"] else "")),
             ("samples", f"{_num(rep['samples'])} in {_num(rep['batches'])} batch(es)")]
    facts += [(str(k), _e(v)) for k, v in (rep.get("about") or {}).items()]
    if acc:
        if acc.get("ann_accuracy") is not None:
            facts.append(("ANN accuracy", _pct(acc["ann_accuracy"])))
        facts.append((f"SNN accuracy at T = {acc['timesteps'][-1]}", _pct(acc["accuracy"][-1])))
    facts.append(("snnbridge", _e(rep["snnbridge_version"]) + f", {_e(rep['created_at'])}"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Conversion report: {_e(recipe_label(rep['recipe']))}</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Conversion report</h1>",
        f'<p class="sub">{_e(recipe_label(rep["recipe"]))} on the {_e(rep["backend"])} backend, '
        f"{len(sites)} activation sites</p>",
        _table(None, [(_e(k), v) for k, v in facts], left=2),
    ]
    parts.append("<h2>Accuracy vs T</h2>")
    if acc:
        parts.append(_img(embedded, "accuracy", "SNN accuracy against the number of time steps"))
        head = ["T", "steps run", "SNN accuracy"] + (["vs ANN"] if acc.get("ann_accuracy") is not None else [])
        rows = []
        for t, n, a in zip(acc["timesteps"], acc["steps_run"], acc["accuracy"]):
            row = [_num(t), _num(n), _pct(a)]
            if acc.get("ann_accuracy") is not None:
                row.append(f"{100 * (a - acc['ann_accuracy']):+.2f}")
            rows.append(row)
        parts.append(_table(head, rows))
    else:
        parts.append('<p class="note">The data had no labels: no accuracy.</p>')
    parts.append(f"<h2>Per site (T = {rep['measured_at']})</h2>")
    if not rep["with_ann"]:
        parts.append(f'<p class="note">No errors, offset spikes or shares: {_e(rep.get("not_compared"))}. They '
                     "compare the SNN with its ANN (snnbridge.report(ann, ...); on the command line, --model with "
                     "--checkpoint).</p>")
    parts.append(_img(embedded, "sites", "per-site error split, firing rate and silent neurons"))
    parts.append(_img(embedded, "offsets", "per-site share of the error and offset spikes"))
    head = ["site", "kind", "shape", "threshold (min / median / max)", "firing rate", "silent", "clipped",
            "clip. error", "quant. error", "error", "rel. error", "share", "extra spikes", "missing spikes", "mean psi"]
    rows = []
    for s in sites:
        off = s.get("offset_spikes") or {}
        rows.append([_e(s["site"]), _e(s["kind"]), _e("x".join(map(str, s["shape"] or [])) or "?"),
                     _threshold_text(s["threshold"]), _num(s["firing_rate"]), _pct(s["silent"]),
                     _pct(s["clipped"]), _num(s["clip_error"]), _num(s["quant_error"]), _num(s["error"]),
                     _num(s["relative_error"]), _pct(s["share"]), _pct(off.get("extra")), _pct(off.get("missing")),
                     _num(off.get("mean"))])
    parts.append(_table(head, rows, left=3))
    parts.append("<h2>Synaptic operations and energy</h2>")
    parts.append(_energy_html(energy, embedded))
    notes = rep["conversion"]["notes"] + [f"{k}: {v}" for k, vs in rep["conversion"]["graph"].items()
                                          for v in (vs if isinstance(vs, list) else [vs]) if v]
    if notes:
        parts.append("<h2>Conversion notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Definitions</h2><dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in DEFINITIONS)
                 + "</dl>")
    parts.append('<p class="note">Error vocabulary: T. Bu et al., Optimal ANN-SNN Conversion for High-accuracy and '
                 "Ultra-low-latency Spiking Neural Networks, ICLR 2022 (github.com/putshua/SNN_conversion_QCFS); "
                 "Z. Hao et al., Bridging the Gap between ANNs and SNNs by Calibrating Offset Spikes, ICLR 2023 "
                 "(github.com/hzc1208/ANN2SNN_COS). Energy per operation: M. Horowitz, Computing's energy problem "
                 "(and what we can do about it), ISSCC 2014.</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


_ENERGY_TEXT = ("kind", "input", "runs")
_ENERGY_KEYS = ("synops", "macs", "adds", "neuron_updates", "ann_macs", "energy_pj", "ann_energy_pj")


def _energy_html(energy: Mapping[str, Any], embedded: Mapping[str, str]) -> str:
    if not energy.get("available"):
        return f'<p class="note">Not measured: {_e(energy.get("reason", "unknown"))}.</p>'
    total = energy.get("total") or {}
    layers = energy.get("layers") or []
    text = [k for k in _ENERGY_TEXT if any(k in layer for layer in layers)]
    keys = [k for k in _ENERGY_KEYS if k in total or any(k in layer for layer in layers)]
    out = [f'<p class="note">Per sample, counted on the first batch ({_num(energy.get("samples"))} images) by '
           "snnbridge.energy.</p>"]
    ratios = []
    synops, ann_macs = total.get("synops"), total.get("ann_macs")
    if synops is not None and ann_macs:
        ratios.append(f"SynOps / ANN MACs = {_num(synops / ann_macs)}")
    if total.get("energy_pj") is not None and total.get("ann_energy_pj"):
        ratios.append(f"SNN energy / ANN energy = {_num(total['energy_pj'] / total['ann_energy_pj'])}")
    if isinstance(energy.get("costs"), Mapping):
        ratios.append("pJ per operation: " + ", ".join(f"{k} {v}" for k, v in energy["costs"].items()))
    if ratios:
        out.append("<p>" + "; ".join(_e(r) for r in ratios) + "</p>")
    out.append(_img(embedded, "energy", "operations per layer"))
    rows = [[_e(layer.get("name", i))] + [_e(layer.get(k, "")) for k in text] + [_num(layer.get(k)) for k in keys]
            for i, layer in enumerate(layers)]
    if total:
        rows.append(["<b>total</b>"] + [""] * len(text) + [_num(total.get(k)) for k in keys])
    out.append(_table(["layer", *text, *keys], rows, left=1 + len(text)))
    notes = list(energy.get("notes") or []) + [f"uncounted: {u.get('name')} ({u.get('why')})"
                                               for u in energy.get("uncounted") or [] if isinstance(u, Mapping)]
    if notes:
        out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def summary_lines(rep: dict[str, Any]) -> list[str]:
    """The report as a few lines of text (what ``snnbridge report`` prints)."""
    lines = []
    acc = rep.get("accuracy")
    if acc:
        ann = acc.get("ann_accuracy")
        lines.append("accuracy:    " + ", ".join(f"T={t} {100 * a:.2f} %" for t, a in zip(acc["timesteps"],
                                                                                         acc["accuracy"]))
                     + (f" (ANN {100 * ann:.2f} %)" if ann is not None else ""))
    lines.append(f"\n  {'site':<24} {'rate':>7} {'silent':>7} {'clip err':>9} {'quant err':>9} {'share':>7} "
                 f"{'extra':>7} {'missing':>7}")
    def f(v: float | None, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.4g}"

    for s in rep["sites"]:
        off = s.get("offset_spikes") or {}
        lines.append(f"  {s['site']:<24} {f(s['firing_rate']):>7} {f(s['silent'], True):>7} {f(s['clip_error']):>9} "
                     f"{f(s['quant_error']):>9} {f(s['share'], True):>7} {f(off.get('extra'), True):>7} "
                     f"{f(off.get('missing'), True):>7}")
    energy = rep.get("energy") or {}
    total = energy.get("total") or {}
    if energy.get("available") and total.get("synops") is not None:
        ratio = f" ({total['synops'] / total['ann_macs']:.3g} x the ANN's MACs)" if total.get("ann_macs") else ""
        lines.append(f"\nSynOps:      {total['synops']:.4g} per sample{ratio}, counted on the first batch")
    elif not energy.get("available"):
        lines.append(f"\nSynOps:      not measured ({energy.get('reason')})")
    return lines
