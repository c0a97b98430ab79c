"""Small statistics helpers shared by threshold plugins."""

from __future__ import annotations

import torch


def percentile(values: torch.Tensor, p: float) -> torch.Tensor:
    """The ``p``-th percentile (0..100) along the last dimension, with linear interpolation.

    Same convention as ``numpy.percentile(method="linear")``; unlike ``torch.quantile`` it
    has no input-size limit (it sorts).
    """
    v, _ = torch.sort(values.double(), dim=-1)
    n = v.shape[-1]
    pos = (p / 100.0) * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return (v[..., lo] + (v[..., hi] - v[..., lo]) * frac).float()


def positive_thresholds(values: torch.Tensor, site: str, ctx, plugin: str) -> torch.Tensor | float:
    """Make estimated thresholds usable: replace channels that never fired (<= 0) and report it.

    A channel whose activation is never positive on the calibration data would get a zero
    threshold (division by zero / firing on every step); it gets the largest threshold of
    its site instead (1.0 if the whole site is silent), and the conversion report says so.
    """
    if values.dim() == 0:
        v = float(values)
        if v > 0:
            return v
        ctx.report["notes"].append(f"{plugin}: site {site} never activated on the calibration data; threshold set to 1.0")
        return 1.0
    dead = values <= 0
    if dead.any():
        fill = float(values.max()) if float(values.max()) > 0 else 1.0
        ctx.report["notes"].append(f"{plugin}: {int(dead.sum())} channel(s) of site {site} never activated; "
                                   f"their threshold is set to {fill:.4g}")
        values = torch.where(dead, torch.full_like(values, fill), values)
    return values
