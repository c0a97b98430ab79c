"""The neuron-layer contract that adapters implement, and the public one-call simulator.

Every adapter returns, from ``snnbridge_make_neuron``, a :class:`NeuronLayer`: an
``nn.Module`` holding genuine neurons of its framework (so the framework's reset, monitors
and step-mode tools see them) plus one uniform call, :meth:`NeuronLayer.simulate`, that
runs the layer's neurons over a whole input sequence from a given initial state and
returns the spikes and, on request, the membrane potential after every step. COS, SRP,
FTBC and calibration use that call to inspect potentials on whichever backend was chosen.

The dynamics are those of :mod:`snnbridge.spec` (fire on ``v >= threshold``, reset by
subtraction). The input passed to ``simulate`` already contains any per-step bias of the
spec; the adapter realizes only threshold, initial state and the firing/reset rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError
from .spec import NeuronSpec


@dataclass
class SimResult:
    """Result of :meth:`NeuronLayer.simulate`.

    ``spikes``: ``[T, B, ...]`` of 0/1 values; ``v_last``: the membrane after the last
    step, ``[B, ...]``; ``v_seq``: the membrane after each step's reset, ``[T, B, ...]``
    (only when asked for).
    """

    spikes: torch.Tensor
    v_last: torch.Tensor
    v_seq: torch.Tensor | None = None


class NeuronLayer(nn.Module):
    """Base class of the neuron layers adapters build for one activation site."""

    #: the backend name (set by each adapter). Not called ``backend``: SpikingJelly's
    #: ``functional.set_backend`` treats every module with a ``backend`` attribute as its own.
    backend_name: str = "?"

    def __init__(self, spec: NeuronSpec):
        super().__init__()
        self.spec = spec

    def simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool = False) -> SimResult:
        """Run ``x_seq`` (``[T, B, ...]``) from the full-shape state ``v_init`` (``[B, ...]``)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        th = self.spec.threshold
        desc = f"{th:.4g}" if isinstance(th, float) else f"per-channel[{th.shape[0]}]"
        return f"backend={self.backend_name}, threshold={desc}"


def check_sequence(x_seq: torch.Tensor, v_init: torch.Tensor | None = None) -> None:
    """Shape and value checks shared by every entry point that runs neurons."""
    if not isinstance(x_seq, torch.Tensor):
        raise InputError(f"the input sequence must be a torch.Tensor shaped [T, B, ...], got {type(x_seq).__name__}.")
    if x_seq.dim() < 2:
        raise InputError(f"the input sequence must be shaped [T, B, ...] (time first, then batch), got shape "
                         f"{tuple(x_seq.shape)}; add the missing dimensions with unsqueeze.")
    if not torch.isfinite(x_seq).all():
        raise InputError("the input sequence contains NaN or Inf; clean the input (torch.nan_to_num) or find the "
                         "layer that produced it.")
    if v_init is not None and tuple(v_init.shape) != tuple(x_seq.shape[1:]):
        raise InputError(f"the initial state has shape {tuple(v_init.shape)} but each step of the input has shape "
                         f"{tuple(x_seq.shape[1:])}; give a full-shape state [B, ...].")


def simulate(spec: NeuronSpec, x_seq: torch.Tensor, *, backend: str = "torch", backend_options: dict | None = None,
             v_init: torch.Tensor | None = None, return_v: bool = False) -> SimResult:
    """Run one layer of neurons described by ``spec`` on ``x_seq`` (``[T, B, ...]``) with a backend.

    The public, backend-neutral way to check neuron behaviour (golden facts, cross-backend
    equivalence). ``v_init`` defaults to ``spec.v0``; ``spec.step_bias`` is added per step.
    """
    from .runtime import biased_sequence, make_neuron_factory

    check_sequence(x_seq, v_init)
    layer = make_neuron_factory(backend, backend_options)(spec)
    layer = layer.to(x_seq.device)
    v = spec.v0_tensor(x_seq[0]) if v_init is None else v_init.to(x_seq.dtype).clone()
    return layer.simulate(biased_sequence(spec, x_seq, 0), v, return_v=return_v)
