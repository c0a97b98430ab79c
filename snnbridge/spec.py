"""NeuronSpec: the contract between method plugins and neuron backends.

A method plugin never builds a neuron; it edits a :class:`NeuronSpec` (a frozen value,
changed with :meth:`NeuronSpec.replace`). An adapter never knows which method produced a
spec; it only realizes it with its framework's neurons. Because of this split, one recipe
gives the same spikes on every backend.

The neuron every spec describes (the IF neuron every conversion method assumes), for the input current ``x(t)`` of step
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
  initial potentials are a runtime matter (see ``snnbridge.corrections``), not part of the spec.
* ``step_bias``: ``None``; a float added every step; a 1-D tensor ``[T]`` (one value per
  step, all channels); or a 2-D tensor ``[T, C]`` (per step and channel). A table must have
  at least as many rows as the steps that are run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import channels
from .errors import InputError

Scalar = float | int
TensorLike = float | torch.Tensor


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
                    raise InputError(f"NeuronSpec.step_bias must be a float, [T] or [T, C], got shape "
                                     f"{tuple(b.shape)}.")
            elif isinstance(b, (int, float)) and not isinstance(b, bool):
                b = float(b)
            else:
                raise InputError(f"NeuronSpec.step_bias must be None, a float or a tensor, got {type(b).__name__}.")
            object.__setattr__(self, "step_bias", b)

    # -- helpers used by the core and adapters (no method math) ---------------------------
    def replace(self, **changes) -> NeuronSpec:
        """Return a copy with some fields changed (specs are immutable)."""
        return dataclasses.replace(self, **changes)

    @property
    def per_channel(self) -> bool:
        """True when the threshold is a per-channel tensor."""
        return isinstance(self.threshold, torch.Tensor)

    def threshold_tensor(self, like: torch.Tensor, channel_dim: int = 1) -> torch.Tensor | float:
        """The threshold broadcastable against ``like`` (a ``[B, C, ...]`` or ``[T, B, C, ...]`` tensor).

        ``channel_dim`` counts in ``like``'s layout; a layer-wise threshold stays a float.
        """
        return channels.broadcast(self.threshold, like, channel_dim)

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
            v0 = channels.broadcast(v0, like, 1)
        elif tuple(v0.shape) == tuple(like.shape[1:]):
            v0 = v0.unsqueeze(0)
        elif tuple(v0.shape) != tuple(like.shape):
            raise InputError(f"NeuronSpec.v0 of shape {tuple(v0.shape)} does not fit a state of shape "
                             f"{tuple(like.shape)}; give a float, [C] or [C, ...] (the activation shape without "
                             "batch).")
        return v0.expand_as(like).clone()

    @property
    def max_timesteps(self) -> int | None:
        """The most steps this spec can run: the rows of its per-step bias table (None: any number)."""
        b = self.step_bias
        return int(b.shape[0]) if isinstance(b, torch.Tensor) else None

    def step_table(self, timesteps: int, channels: int) -> torch.Tensor:
        """The per-step bias as a fresh ``[T, C]`` float32 table on the CPU (zeros when there is none).

        Several plugins can write per-step biases (a constant shift, per-step tables): each
        builds on the table of the spec it received. A table shorter than ``timesteps`` cannot
        be extended (it was calibrated for a shorter run).
        """
        b, T = self.step_bias, int(timesteps)
        if b is None:
            return torch.zeros(T, channels)
        if isinstance(b, float):
            return torch.full((T, channels), b)
        if b.shape[0] < T:
            raise InputError(f"a per-step bias table of {b.shape[0]} steps cannot be extended to {T} steps; "
                             "calibrate every T-specific plugin of the recipe for the same T.")
        table = b[:T].detach().float().cpu()
        if table.dim() == 1:
            return table[:, None].expand(T, channels).clone()
        return table.clone()

    def offset_v0(self, delta: torch.Tensor) -> NeuronSpec:
        """A copy whose initial potential is ``v0 + delta`` (``delta`` per position, ``[C, ...]``)."""
        v0 = self.v0
        if isinstance(v0, float):
            return self.replace(v0=delta + v0)
        v0 = v0.to(delta.dtype)
        if v0.dim() == 1 and delta.dim() > 1:
            v0 = v0.view(-1, *([1] * (delta.dim() - 1)))
        return self.replace(v0=v0 + delta)

    def biased(self, x_seq: torch.Tensor, t0: int = 0) -> torch.Tensor:
        """``x_seq`` (``[n, B, C, ...]``) plus the per-step bias of absolute steps ``t0 .. t0+n-1``.

        This is the drive the neurons integrate; adapters never see the bias itself.
        """
        b = self.step_bias
        if b is None:
            return x_seq
        if isinstance(b, float):
            return x_seq + b
        n = x_seq.shape[0]
        if b.shape[0] < t0 + n:
            raise InputError(f"the neuron's per-step bias table has {b.shape[0]} steps but step {t0 + n} was run; it "
                             "was calibrated for a shorter run. Re-run the correction (convert again) for this T.")
        rows = b[t0:t0 + n].to(device=x_seq.device, dtype=x_seq.dtype)
        shape = [n] + [1] * (x_seq.dim() - 1)
        if rows.dim() == 2:
            if x_seq.dim() < 3 or x_seq.shape[2] != rows.shape[1]:
                raise InputError(f"a per-step, per-channel bias of {rows.shape[1]} channels does not fit activations "
                                 f"shaped {tuple(x_seq.shape[1:])}.")
            shape[2] = rows.shape[1]
        return x_seq + rows.view(shape)

    def describe(self) -> dict:
        """A short JSON-friendly summary (for reports)."""
        def summ(v):
            if v is None:
                return None
            if isinstance(v, float):
                return v
            return {"shape": list(v.shape), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean())}
        return {"threshold": summ(self.threshold), "v0": summ(self.v0), "step_bias": summ(self.step_bias)}

