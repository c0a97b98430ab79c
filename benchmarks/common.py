"""Pieces the benchmarks share: test batches, accuracy from one sweep or from one run per T, and SpikingJelly 2.0's
own converters run on the same network and calibration images (``benchmarks/data_driven.py`` and the suite,
``benchmarks/run.py``).

Test data are uint8 image tensors with labels, ``test = (x_u8, y)``, normalised batch by batch
(``examples/cifar10/data.py``'s ``normalize``), so a 10,000-image test set stays small in memory.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import time
from collections.abc import Callable, Iterable, Iterator

import torch

import snnbridge
from examples.cifar10 import data as cdata

#: SpikingJelly 2.0's ``ann2snn.RateCodingRecipe`` settings by label (Converter(recipe).convert(ann))
SJ_RATE_CODING: dict[str, dict] = {
    "SJ RateCoding max": {"mode": "max"},
    "SJ RateCoding 99.9%": {"mode": "99.9%"},
    "SJ RateCoding max channel-wise": {"mode": "max", "channel_wise": True},
    "SJ RateCoding 99.9% channel-wise": {"mode": "99.9%", "channel_wise": True},
    "SJ RateCoding 99.9% channel-wise half-threshold": {"mode": "99.9%", "channel_wise": True,
                                                        "half_threshold": True},
}
SJ_LTB = "SJ LTB"
SJ_LTB_DELAY = "SJ LTB + estimate_delay_start"
#: every SpikingJelly label :func:`run_spikingjelly` knows
SJ_LABELS = (*SJ_RATE_CODING, SJ_LTB, SJ_LTB_DELAY)


def batches(test, bs: int):
    """Normalised ``(images, labels)`` batches of ``test = (x_u8, y)``."""
    x, y = test
    for i in range(0, len(x), bs):
        yield cdata.normalize(x[i:i + bs]), y[i:i + bs]


def sweep_curve(snn, test, T: int, bs: int, progress: bool = False) -> list[float]:
    """Accuracy after each of 1..T counted steps from one ``sweep`` per batch (``snnbridge.accuracy_curve``)."""
    return snnbridge.accuracy_curve(snn, batches(test, bs), [T], progress=progress)["curve"]


def device_of(module) -> torch.device:
    """Where a model's parameters are (the CPU for a model without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


@torch.no_grad()
def acc_at(snn, test, T: int, bs: int) -> float:
    """Accuracy of ``snn(x, timesteps=T)``: one run of T counted steps (for SNNs converted for that T)."""
    x, y = test
    dev = device_of(snn)
    return sum(int((snn(cdata.normalize(x[i:i + bs]).to(dev), timesteps=T).argmax(1).cpu() == y[i:i + bs]).sum())
               for i in range(0, len(x), bs)) / len(x)


@torch.no_grad()
def sj_outputs(sj, test, T: int, bs: int) -> torch.Tensor:
    """Per-step outputs of a SpikingJelly model in multi-step mode, ``[T, N, classes]``."""
    from spikingjelly.activation_based import functional

    functional.set_step_mode(sj, "m")
    x, _ = test
    dev = device_of(sj)
    outs = []
    for i in range(0, len(x), bs):
        functional.reset_net(sj)
        xb = cdata.normalize(x[i:i + bs]).to(dev)
        outs.append(sj(xb.unsqueeze(0).repeat(T, 1, 1, 1, 1)).cpu())
    functional.reset_net(sj)
    return torch.cat(outs, 1)


def window_curve(per_step: torch.Tensor, y: torch.Tensor, T: int,
                 start_of: Callable[[int], int] | None = None) -> list[float]:
    """Accuracy after 1..T steps of the mean output over steps ``start_of(t)..t`` (default: from step 0)."""
    csum = torch.cat([torch.zeros_like(per_step[:1]), per_step.cumsum(0)])
    curve = []
    for t in range(1, T + 1):
        s = start_of(t) if start_of is not None else 0
        curve.append(float(((csum[t] - csum[s]).argmax(-1) == y).float().mean()))
    return curve


#: SpikingJelly 2.0's recipe modules that wrap the calibration loader in a tqdm bar of their own
SJ_TQDM_MODULES = ("spikingjelly.activation_based.ann2snn.recipes.rate_coding",
                   "spikingjelly.activation_based.ann2snn.recipes.local_threshold_balancing")


@contextlib.contextmanager
def sj_progress(enabled: bool) -> Iterator[None]:
    """SpikingJelly's calibration bars on or off: its recipes take no such option, so with ``enabled=False`` their
    module-level ``tqdm`` is swapped for a disabled one for the duration (restored after, whatever happens)."""
    if enabled:
        yield
        return
    saved = []
    for name in SJ_TQDM_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # another SpikingJelly layout: nothing to silence there
            continue
        if hasattr(mod, "tqdm"):
            saved.append((mod, mod.tqdm))
            mod.tqdm = functools.partial(mod.tqdm, disable=True)
    try:
        yield
    finally:
        for mod, bar in saved:
            mod.tqdm = bar


def run_spikingjelly(model, calib: list[torch.Tensor], test, T: int, bs: int, labels: Iterable[str] = SJ_LABELS,
                     log: Callable[[str], None] = print, progress: bool = True,
                     on_result: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """SpikingJelly 2.0's converters (``SJ_LABELS``) on ``model`` with the same calibration batches, each read out
    at every step 1..T from one multi-step run: ``{label: {"kind": "sweep", "curve", "conversion_seconds":
    {"all": s}, "eval_seconds"}}`` (the delayed-readout variant adds ``delay_start`` per T). ``progress=False``
    silences SpikingJelly's own calibration bars. ``on_result(label, result)`` runs as each label finishes, so a
    caller can save it before the next converter starts (a stopped run keeps the converters already done)."""
    from spikingjelly.activation_based import ann2snn, functional

    labels = list(labels)
    unknown = [lbl for lbl in labels if lbl not in SJ_LABELS]
    if unknown:
        raise ValueError(f"unknown SpikingJelly label(s) {unknown}; known: {', '.join(SJ_LABELS)}")
    y = test[1]
    recipes: dict[str, Callable] = {lbl: (lambda kw=kw: ann2snn.RateCodingRecipe(calib, **kw))
                                    for lbl, kw in SJ_RATE_CODING.items() if lbl in labels}
    if SJ_LTB in labels or SJ_LTB_DELAY in labels:
        recipes[SJ_LTB] = lambda: ann2snn.LocalThresholdBalancingRecipe(calib)
    out: dict[str, dict] = {}
    for label, make in recipes.items():
        t0 = time.perf_counter()
        with sj_progress(progress):
            sj = ann2snn.Converter(make()).convert(copy.deepcopy(model))
        conv = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        per_step = sj_outputs(sj, test, T, bs)  # multi-step: [T, B, ...] in one call
        ev = round(time.perf_counter() - t0, 2)
        curve = window_curve(per_step, y, T)
        if label in labels:
            out[label] = {"kind": "sweep", "curve": curve, "conversion_seconds": {"all": conv}, "eval_seconds": ev}
            if on_result is not None:
                on_result(label, out[label])
            log(f"    {label}: " + "  ".join(f"T={t}: {100 * curve[t - 1]:.2f}%" for t in (1, 2, 4, 8, 16, 32, 64)
                                            if t <= T))
        if label == SJ_LTB and SJ_LTB_DELAY in labels:
            functional.set_step_mode(sj, "s")  # the helper probes one static batch
            t0 = time.perf_counter()
            dev = str(device_of(sj))
            starts = {t: ann2snn.estimate_delay_start(sj, calib, dev, t) for t in range(1, T + 1)}
            est = round(time.perf_counter() - t0, 2)
            curve = window_curve(per_step, y, T, starts.__getitem__)
            out[SJ_LTB_DELAY] = {"kind": "sweep", "curve": curve, "eval_seconds": ev, "delay_start": starts,
                                 "conversion_seconds": {"all": round(conv + est / T, 2)}}
            if on_result is not None:
                on_result(SJ_LTB_DELAY, out[SJ_LTB_DELAY])
    return out
