"""NeuronSpec: the contract between method plugins and neuron backends.

A method plugin never builds a neuron; it edits a :class:`NeuronSpec` (a frozen value,
changed with :meth:`NeuronSpec.replace`). An adapter never knows which method produced a
spec; it only realizes it with its framework's neurons. Because of this split, one recipe
gives the same spikes on every backend.

The neuron every spec describes (METHODS.md 0.1), for the input current ``x(t)`` of step
``t = 1..T`` and one neuron::

    m(t) = v(t-1) + x(t) + bias(t)      # charge (bias: optional per-step input bias)
    s(t) = 1 if m(t) >= threshold else 0 # the single firing rule of snnbridge: ">="
    v(t) = m(t) - threshold * s(t)       # reset by subtraction ("soft reset")
    out(t) = threshold * s(t)            # weighted spike, passed to the next layer
    v(0) = v0

Shapes. A site's activation has shape ``[B, C, ...]`` (``C`` at ``channel_dim`` 1; for a
``Linear`` output ``[B, F]`` the features are the channels). Then

* ``threshold``: a positive float, or a 1-D tensor of length ``C`` (per channel).
* ``v0``: a float; a 1-D tensor ``[C]`` (per channel); or a tensor of the activation shape
  without the batch dimension ``[C, ...]`` (per position, shared by all samples). Per-sample
  initial potentials are a runtime matter (see ``snnbridge.runtime``), not part of the spec.
* ``step_bias``: ``None``; a float added every step; a 1-D tensor ``[T]`` (one value per
  step, all channels); or a 2-D tensor ``[T, C]`` (per step and channel). A table must have
  at least as many rows as the steps that are run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Union

import torch

from .errors import InputError

Scalar = Union[float, int]
TensorLike = Union[float, torch.Tensor]


@dataclass(frozen=True, eq=False)
class NeuronSpec:
    """Integrate-and-fire neurons of one activation site (see the module docstring)."""

    threshold: TensorLike
    v0: TensorLike = 0.0
    step_bias: TensorLike | None = None

    def __post_init__(self):
        th = self.threshold
        if isinstance(th, torch.Tensor):
            th = th.detach().to(torch.float32)
            if th.dim() == 0:
                th = float(th)
            elif th.dim() != 1:
                raise InputError(f"NeuronSpec.threshold must be a float or a 1-D per-channel tensor, got shape "
                                 f"{tuple(th.shape)}; reduce it to one value per channel.")
        if isinstance(th, (int, float)) and not isinstance(th, bool):
            th = float(th)
            if not th > 0 or th != th or th == float("inf"):
                raise InputError(f"NeuronSpec.threshold must be a finite positive number, got {th}; a threshold "
                                 "<= 0 fires on every step. Check the threshold estimator's statistics.")
        elif isinstance(th, torch.Tensor):
            if not torch.isfinite(th).all() or (th <= 0).any():
                bad = int((~torch.isfinite(th) | (th <= 0)).sum())
                raise InputError(f"NeuronSpec.threshold has {bad} channel(s) that are not finite and positive; "
                                 "clamp dead channels to a small positive value before building the spec.")
        else:
            raise InputError(f"NeuronSpec.threshold must be a float or a tensor, got {type(th).__name__}.")
        object.__setattr__(self, "threshold", th)

        v0 = self.v0
        if isinstance(v0, torch.Tensor):
            v0 = v0.detach().to(torch.float32)
            if v0.dim() == 0:
                v0 = float(v0)
        elif isinstance(v0, (int, float)) and not isinstance(v0, bool):
            v0 = float(v0)
        else:
            raise InputError(f"NeuronSpec.v0 must be a float or a tensor, got {type(v0).__name__}.")
        if isinstance(v0, torch.Tensor) and not torch.isfinite(v0).all():
            raise InputError("NeuronSpec.v0 contains NaN or Inf; check the plugin that wrote it.")
        object.__setattr__(self, "v0", v0)

        b = self.step_bias
        if b is not None:
            if isinstance(b, torch.Tensor):
                b = b.detach().to(torch.float32)
                if b.dim() == 0:
                    b = float(b)
                elif b.dim() > 2:
                    raise InputError(f"NeuronSpec.step_bias must be a float, [T] or [T, C], got shape {tuple(b.shape)}.")
            elif isinstance(b, (int, float)) and not isinstance(b, bool):
                b = float(b)
            else:
                raise InputError(f"NeuronSpec.step_bias must be None, a float or a tensor, got {type(b).__name__}.")
            object.__setattr__(self, "step_bias", b)

    # -- helpers used by the core and adapters (no method math) ---------------------------
    def replace(self, **changes) -> "NeuronSpec":
        """Return a copy with some fields changed (specs are immutable)."""
        return dataclasses.replace(self, **changes)

    @property
    def per_channel(self) -> bool:
        """True when the threshold is a per-channel tensor."""
        return isinstance(self.threshold, torch.Tensor)

    def threshold_tensor(self, like: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """The threshold broadcastable against ``like`` (a ``[B, C, ...]`` or ``[T, B, C, ...]`` tensor).

        ``channel_dim`` counts in ``like``'s layout.
        """
        return _broadcast_channels(self.threshold, like, channel_dim)

    def v0_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The initial potential expanded to the full state shape of ``like`` (``[B, C, ...]``).

        The result is a fresh, full-shape tensor: both SpikingJelly and snnTorch silently
        replace *broadcastable* initial states with zeros, so adapters always get full shapes.
        """
        v0 = self.v0
        if isinstance(v0, float):
            return torch.full_like(like, v0)
        v0 = v0.to(device=like.device, dtype=like.dtype)
        if v0.dim() == 1 and like.dim() >= 2 and v0.shape[0] == like.shape[1]:
            v0 = _broadcast_channels(v0, like, 1)
        elif tuple(v0.shape) == tuple(like.shape[1:]):
            v0 = v0.unsqueeze(0)
        elif tuple(v0.shape) != tuple(like.shape):
            raise InputError(f"NeuronSpec.v0 of shape {tuple(v0.shape)} does not fit a state of shape "
                             f"{tuple(like.shape)}; give a float, [C] or [C, ...] (the activation shape without batch).")
        return v0.expand_as(like).clone()

    def bias_at(self, t: int, like: torch.Tensor) -> torch.Tensor | float:
        """The per-step bias for 0-based step ``t`` broadcastable against ``like`` ([B, C, ...])."""
        b = self.step_bias
        if b is None:
            return 0.0
        if isinstance(b, float):
            return b
        if t >= b.shape[0]:
            raise InputError(f"NeuronSpec.step_bias has {b.shape[0]} steps but step {t + 1} was run; the bias "
                             "table was calibrated for a shorter run. Re-run the correction for this T.")
        row = b[t].to(device=like.device, dtype=like.dtype)
        if row.dim() == 0:
            return row
        return _broadcast_channels(row, like, 1)

    def describe(self) -> dict:
        """A short JSON-friendly summary (for reports)."""
        def summ(v):
            if v is None:
                return None
            if isinstance(v, float):
                return v
            return {"shape": list(v.shape), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean())}
        return {"threshold": summ(self.threshold), "v0": summ(self.v0), "step_bias": summ(self.step_bias)}


def _broadcast_channels(values, like: torch.Tensor, channel_dim: int) -> torch.Tensor | float:
    if isinstance(values, float):
        return values
    values = values.to(device=like.device, dtype=like.dtype)
    if like.dim() <= channel_dim or like.shape[channel_dim] != values.shape[0]:
        raise InputError(f"a per-channel value of length {values.shape[0]} does not match dimension {channel_dim} "
                         f"of a tensor shaped {tuple(like.shape)}.")
    shape = [1] * like.dim()
    shape[channel_dim] = values.shape[0]
    return values.view(shape)
