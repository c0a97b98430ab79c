"""Clip-and-shift (Deng & Gu, ICLR 2021; later called "RTS"). Code: github.com/Jackn0/snn_optimal_conversion_pipeline.

Training (``snnbridge.prepare(model, ["clipshift"])``): every activation site becomes a
:class:`ThresholdReLU` ``h(z) = clip(z, 0, y_th)`` with one global ``y_th`` (default 1.0, the
official CIFAR-10 value; 2 for CIFAR-100, 3 for ImageNet), gradient 1 on the *closed*
interval ``[0, y_th]``. ``train_shift_T`` reproduces the optional ANN-side shift
``h(z - y_th/(2 T_ref))`` (off by default, as in the official code).

Conversion (``["clipshift"]``): ``threshold_source: max`` (default, official) sets each site's
threshold to the largest clipped activation on the calibration data; ``y_th`` uses the clip
bound and needs no data. Any site with an upper bound converts (also ``Hardtanh(0, m)``,
``ReLU6``, ``clamp(x, 0, m)``); a plain ReLU site is refused. Every step adds
``theta / (2 T_ref)`` to the input (``v0 = 0``), turning the SNN's floor into rounding by step
``T_ref`` = ``shift_T`` or the conversion's T (the official code always uses 32). This
per-step shift is not ``v0 = theta/2`` (same total charge at step T, fewer early spikes), so the
plugin provides ``step_shift`` and ``opi`` refuses to stack with it.

Where the official code differs: its output layer spikes too (threshold = the largest
logit); here it stays analog. Its maxima come from a full pass over the training set; here
from the calibration batches given.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snnbridge import MaxObserver, MissingRequirementError, Option, PluginInfo, hookimpl

NAME = "clipshift"


class _ClipSTE(torch.autograd.Function):
    """clip(x, 0, top) with gradient 1 on the closed interval [0, top], 0 outside."""

    @staticmethod
    def forward(ctx, x, top: float):
        ctx.save_for_backward(x)
        ctx.top = top
        return torch.clamp(x, 0.0, top)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inside = (x >= 0) & (x <= ctx.top)
        return grad * inside.to(grad.dtype), None


class ThresholdReLU(nn.Module):
    """``clip(z - s, 0, y_th)`` with ``s = y_th / (2 T_ref)`` when ``train_shift_T`` is set, else ``s = 0``."""

    def __init__(self, y_th: float = 1.0, train_shift_T: int | None = None):
        super().__init__()
        if not float(y_th) > 0:
            raise ValueError(f"ThresholdReLU y_th must be > 0, got {y_th}")
        self.y_th = float(y_th)
        self.train_shift_T = None if train_shift_T is None else int(train_shift_T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.train_shift_T:
            x = x - self.y_th / (2 * self.train_shift_T)
        return _ClipSTE.apply(x, self.y_th)

    def extra_repr(self) -> str:
        return f"y_th={self.y_th}" + (f", train_shift_T={self.train_shift_T}" if self.train_shift_T else "")


class ThresholdReLUClaim:
    """``SiteInfo.claim`` of a threshold-ReLU site (``clip_max`` = y_th)."""

    kind = "threshold_relu"

    def __init__(self, clip_max: float):
        self.clip_max = clip_max


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(
        summary="threshold ReLU for training; theta = max of the clipped activation; +theta/(2T) input every step",
        reference="Deng & Gu, Optimal Conversion of Conventional Artificial Neural Networks to Spiking Neural "
                  "Networks, ICLR 2021",
        provides=("activation", "threshold", "step_shift"), needs_data=_needs_data)


def _needs_data(options):
    """The official threshold (the largest clipped activation) comes from data; the clip bound does not."""
    if options["threshold_source"] == "max":
        return ("with threshold_source 'max' (the official threshold balancing), or use {'clipshift': "
                "{'threshold_source': 'y_th'}} to take the clip bound as threshold")
    return False


def _positive_int_or_none(v) -> bool:
    return v is None or v >= 1


@hookimpl
def snnbridge_add_options():
    return [
        Option("y_th", float, 1.0, "clip bound of the threshold ReLU used for training (official: 1 CIFAR-10, 2 "
               "CIFAR-100, 3 ImageNet)", check=lambda v: v > 0 and math.isfinite(v), check_help="y_th > 0"),
        Option("threshold_source", str, "max", "'max': largest clipped activation on the calibration data (official);"
               " 'y_th': the clip bound (no data needed)", choices=("max", "y_th")),
        Option("shift_T", int, None, "reference T of the per-step shift theta/(2 T_ref); unset = the conversion's "
               "timesteps (the official code fixes 32)", nullable=True, check=_positive_int_or_none,
               check_help="shift_T >= 1"),
        Option("train_shift_T", int, None, "shift the training activation right by y_th/(2 T_ref) (official "
               "--shift_relu; unset = off)", nullable=True, check=_positive_int_or_none,
               check_help="train_shift_T >= 1"),
    ]


@hookimpl
def snnbridge_replace_activation(site, module, options):
    return ThresholdReLU(options["y_th"], options["train_shift_T"])


@hookimpl
def snnbridge_claim_module(module):
    if isinstance(module, ThresholdReLU):
        return ThresholdReLUClaim(module.y_th)
    return None


def _check_bounded(ctx) -> None:
    plain = [n for n, info in ctx.sites.items() if info.clip_max is None]
    if plain:
        raise MissingRequirementError(
            f"plugin {NAME!r} converts networks trained with a threshold (clipped) ReLU, but site(s) "
            f"{', '.join(repr(n) for n in plain)} are unbounded activations. Prepare the model with "
            "snnbridge.prepare(model, ['clipshift']) and train it, or use a threshold estimator for plain ReLU "
            "networks ('maxnorm', 'robustnorm').")


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    _check_bounded(ctx)
    if options["threshold_source"] == "y_th":
        return {n: float(info.clip_max) for n, info in ctx.sites.items()}
    if not ctx.has_data:
        raise MissingRequirementError(
            f"plugin {NAME!r} with threshold_source 'max' (the official threshold balancing) needs calibration data: "
            "pass calibration=<a few training batches> to snnbridge.convert, or use "
            "{'clipshift': {'threshold_source': 'y_th'}} to take the clip bound as threshold.")
    return {n: ctx.usable_threshold(n, v, NAME) for n, v in ctx.collect(MaxObserver()).items()}


@hookimpl
def snnbridge_configure_neuron(site, spec, ctx, options):
    t_ref = options["shift_T"] or ctx.timesteps
    th = spec.threshold
    if not isinstance(th, float):
        raise MissingRequirementError(f"plugin {NAME!r} needs one threshold per layer; site {site.name!r} has a "
                                      "per-channel threshold.")
    return spec.replace(step_bias=th / (2.0 * t_ref))
