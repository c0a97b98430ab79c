"""``snnbridge.simulate``: run one layer of neurons described by a spec, with any backend.

The public, backend-neutral way to check neuron behaviour (hand-worked
values, cross-backend equivalence) without converting a network.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InputError
from .factory import make_neuron_factory
from .neurons import SimResult
from .spec import NeuronSpec


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
             v_init: torch.Tensor | None = None, return_v: bool = False, surrogate: Any = None) -> SimResult:
    """Run one layer of neurons described by ``spec`` on ``x_seq`` (``[T, B, ...]``) with a backend.

    The public, backend-neutral way to check neuron behaviour (hand-worked
    values, cross-backend equivalence). ``v_init`` defaults to ``spec.v0``; ``spec.step_bias`` is added per step.
    ``surrogate``: the neurons' surrogate gradient, as for :meth:`SpikingModel.set_surrogate
    <snnbridge.runtime.SpikingModel.set_surrogate>` (None: the backend's default).
    """
    check_sequence(x_seq, v_init)
    factory = make_neuron_factory(backend, backend_options)
    layer = factory(spec).to(x_seq.device)
    if surrogate is not None:
        layer.set_surrogate(factory.wrap_surrogate(surrogate))
    v = spec.v0_tensor(x_seq[0]) if v_init is None else v_init.to(x_seq.dtype).clone()
    return layer.simulate(spec.biased(x_seq, 0), v, return_v=return_v)
