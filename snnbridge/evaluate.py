"""Accuracy against the number of time steps, from one simulation per batch.

``snn.sweep(x)`` returns the decoded output after every step 1..T of a single run, so the
accuracy at every T comes from one pass over the data::

    result = snnbridge.accuracy_curve(snn, test_loader, timesteps=[1, 2, 4, 8, 16, 32], ann=ann)
    result["accuracy"]      # one value per requested T (fractions)
    result["curve"]         # every T from 1 to the largest

The command line (``snnbridge evaluate``), the CIFAR-10 example and the benchmarks all use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .corrections import check_runnable
from .errors import InputError
from .progress import bar as progress_bar


def _pairs(data: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = (item.get("input", item.get("image")), item.get("label", item.get("target")))
        if not (isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor)
                and isinstance(item[1], torch.Tensor)):
            raise InputError(f"evaluation batch {i + 1} is a {type(item).__name__}; accuracy_curve takes a DataLoader "
                             "or iterable of (images, labels) tensor pairs.")
        yield item[0], item[1]


def _total(data: Any) -> int | None:
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


@torch.no_grad()
def accuracy_curve(snn, data: Iterable, timesteps: Sequence[int] | None = None, *, ann: torch.nn.Module | None = None,
                   device: torch.device | str | None = None, progress: bool = True) -> dict[str, Any]:
    """Top-1 accuracy of ``snn`` after every number of counted steps, from one ``sweep`` per batch.

    :param snn: a :class:`~snnbridge.runtime.SpikingModel` (or anything with ``sweep`` and ``steps_for``).
    :param data: a DataLoader or iterable of ``(images, labels)`` batches.
    :param timesteps: the T values to report (default: powers of two up to ``snn.timesteps``,
        and ``snn.timesteps``); one sweep at the largest serves all of them. A largest T beyond
        the SNN's per-step bias tables (T-specific corrections) is a
        :class:`~snnbridge.errors.TimestepError`, raised before any data is read.
    :param ann: the ANN, for its accuracy on the same images.
    :param device: where to run (default: the SNN's device).
    :param progress: show a progress bar.
    :returns: a JSON-ready dict with ``timesteps``, ``accuracy`` and ``steps_run`` (one entry
        per requested T), ``curve`` (accuracy at every T from 1 to the largest), ``samples``,
        ``ann_accuracy`` (or None) and ``seconds``.
    """
    started = time.perf_counter()
    steps = sorted(set(int(t) for t in (timesteps or default_timesteps(snn.timesteps))))
    if not steps or steps[0] < 1:
        raise InputError(f"timesteps must be positive whole numbers, got {timesteps!r}.")
    t_max = steps[-1]
    if hasattr(snn, "specs"):
        check_runnable(snn, t_max)  # before reading any data: a T its per-step tables cannot cover is refused
    if device is None:
        device = next((p.device for p in snn.parameters()), torch.device("cpu"))
    correct = torch.zeros(t_max, dtype=torch.long)
    ann_correct, seen = 0, 0
    bar = progress_bar(desc="evaluate", enabled=progress, total=_total(data), unit="img")
    try:
        for x, y in _pairs(data):
            x, y = x.to(device), y.to(device)
            curve = snn.sweep(x, timesteps=t_max)  # [T, B, K]: the output after 1..T steps
            if curve.dim() != 3:
                raise InputError(f"the SNN's output per step is shaped {list(curve.shape[1:])}; accuracy needs class "
                                 "scores [B, classes].")
            correct += (curve.argmax(-1) == y.view(1, -1)).sum(1).cpu()
            if ann is not None:
                ann_correct += int((ann(x).argmax(-1) == y).sum())
            seen += int(y.shape[0])
            bar.update(int(y.shape[0]))
    finally:
        bar.close()
    if seen == 0:
        raise InputError("the evaluation data yielded no samples; pass a non-empty DataLoader.")
    curve_acc = (correct.double() / seen).tolist()
    return {"timesteps": steps, "accuracy": [curve_acc[t - 1] for t in steps],
            "steps_run": [int(snn.steps_for(t)) for t in steps], "curve": curve_acc, "samples": seen,
            "ann_accuracy": ann_correct / seen if ann is not None else None,
            "seconds": round(time.perf_counter() - started, 3)}


@torch.no_grad()
def ann_accuracy(model: torch.nn.Module, data: Iterable, *, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of an ANN on ``(images, labels)`` batches (the yardstick next to an accuracy curve)."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct, seen = 0, 0
    for x, y in _pairs(data):
        correct += int((model(x.to(device)).argmax(-1).cpu() == y.cpu()).sum())
        seen += int(y.shape[0])
    if seen == 0:
        raise InputError("the evaluation data yielded no samples; pass a non-empty DataLoader.")
    return correct / seen


def default_timesteps(T: int) -> list[int]:
    """Powers of two up to ``T``, and ``T`` itself."""
    out, t = [], 1
    while t <= T:
        out.append(t)
        t *= 2
    return sorted(set(out + [int(T)]))
