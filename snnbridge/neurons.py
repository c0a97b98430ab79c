"""The neuron-layer contract that adapters implement.

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

import torch
from torch import nn

from .spec import NeuronSpec


class SimResult:
    """Result of :meth:`NeuronLayer.simulate`.

    ``spikes``: ``[T, B, ...]`` of 0/1 values; ``v_last``: the membrane after the last
    step, ``[B, ...]``; ``v_seq``: the membrane after each step's reset, ``[T, B, ...]``
    (only when asked for). An adapter may give the weighted spikes ``output = threshold *
    spikes`` instead of (or besides) ``spikes``: it saves the runtime a pass over the
    sequence, and ``spikes`` is then derived on first access (thresholds are positive).
    """

    def __init__(self, spikes: torch.Tensor | None = None, v_last: torch.Tensor | None = None,
                 v_seq: torch.Tensor | None = None, output: torch.Tensor | None = None):
        if spikes is None and output is None:
            raise ValueError("SimResult needs spikes or output")
        self._spikes, self.v_last, self.v_seq, self.output = spikes, v_last, v_seq, output

    @property
    def spikes(self) -> torch.Tensor:
        if self._spikes is None:
            self._spikes = (self.output != 0).to(self.output.dtype)
        return self._spikes

    def weighted(self, threshold) -> torch.Tensor:
        """The weighted spikes ``threshold * spikes`` (``threshold`` broadcastable against them)."""
        return self.output if self.output is not None else self.spikes * threshold

    def __repr__(self) -> str:
        shape = tuple((self._spikes if self._spikes is not None else self.output).shape)
        return f"SimResult(steps x state = {shape}, v_seq={'yes' if self.v_seq is not None else 'no'})"


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
