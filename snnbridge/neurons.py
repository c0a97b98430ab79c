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

Framework hooks (monitors). The runtime runs time in chunks and may pre-simulate steps it
does not count, so the neurons are called several times per run. When a framework's forward
hooks sit on a layer's neurons (:meth:`NeuronLayer.framework_hooks`, e.g. a SpikingJelly
``monitor.OutputMonitor`` or a forward hook on an ``snntorch.Leaky``), the runtime sets
``deferring_hooks`` for the run, ``simulate`` runs the neurons with those hooks silenced, and
at the end the runtime hands the counted steps to :meth:`NeuronLayer.replay_hooks`, which
fires each hook the way its framework would for one pass over those T steps.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import BackendError
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
        """The 0/1 spikes ``[T, B, ...]`` (recovered from the weighted output when the adapter wrote only that)."""
        if self._spikes is None:
            out = self.output
            assert out is not None  # the constructor requires spikes or output
            self._spikes = (out != 0).to(out.dtype)
        return self._spikes

    def weighted(self, threshold) -> torch.Tensor:
        """The weighted spikes ``threshold * spikes`` (``threshold`` broadcastable against them)."""
        return self.output if self.output is not None else self.spikes * threshold

    def __repr__(self) -> str:
        seq = self._spikes if self._spikes is not None else self.output
        shape = tuple(seq.shape) if seq is not None else ()
        return f"SimResult(steps x state = {shape}, v_seq={'yes' if self.v_seq is not None else 'no'})"


@dataclass
class CountedSteps:
    """A finished run's counted steps at one site, handed to :meth:`NeuronLayer.replay_hooks`.

    ``drive``: what the neurons integrated, ``[T, B, ...]``; ``spikes``: 0/1, ``[T, B, ...]``;
    ``v_seq``: the membrane after each step's reset, ``[T, B, ...]`` (None when the layer's
    :meth:`~NeuronLayer.hooks_need_v` said no); ``v_start``: the membrane the counted steps
    started from, ``[B, ...]``; ``v_last``: the membrane after the last step, ``[B, ...]``.
    """

    drive: torch.Tensor
    spikes: torch.Tensor
    v_seq: torch.Tensor | None
    v_start: torch.Tensor
    v_last: torch.Tensor


class NeuronLayer(nn.Module):
    """Base class of the neuron layers adapters build for one activation site."""

    #: the backend name (set by each adapter). Not called ``backend``: SpikingJelly's
    #: ``functional.set_backend`` treats every module with a ``backend`` attribute as its own.
    backend_name: str = "?"
    #: True while the runtime defers framework hooks for a run: ``simulate`` must not fire them
    deferring_hooks: bool = False
    #: whether gradients reach the input through the spikes (a surrogate gradient); when False,
    #: a run that needs them is refused instead of silently training only the layers after the last neurons
    differentiable: bool = False

    def __init__(self, spec: NeuronSpec):
        super().__init__()
        self.spec = spec

    def simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool = False) -> SimResult:
        """Run ``x_seq`` (``[T, B, ...]``) from the full-shape state ``v_init`` (``[B, ...]``)."""
        raise NotImplementedError

    # -- surrogate gradients (snnbridge.surrogates) ------------------------------------------------
    @property
    def surrogate(self) -> Any:
        """The surrogate object the neurons use now (what :meth:`set_surrogate` got); None = the backend's default."""
        return self.__dict__.get("_surrogate")

    def set_surrogate(self, surrogate: Any) -> None:
        """Put ``surrogate`` on the genuine neurons: what this backend's ``snnbridge_wrap_surrogate`` returned,
        or None for the backend's default. Adapters that support surrogates override it (and call
        ``self._keep_surrogate(surrogate)``); the base refuses any surrogate."""
        if surrogate is not None:
            raise BackendError(f"the {self.backend_name!r} backend's neurons take no surrogate gradient; use "
                               "backend='torch', 'spikingjelly' or 'snntorch'.")

    def _keep_surrogate(self, surrogate: Any) -> None:
        """Remember the surrogate outside nn.Module's registry (a framework module is owned by the neurons)."""
        self.__dict__["_surrogate"] = surrogate

    # -- framework hooks (see the module docstring) ------------------------------------------------
    def framework_hooks(self) -> bool:
        """Whether forward hooks of the framework (monitors) sit on this layer's neurons. Default: none."""
        return False

    def hooks_need_v(self) -> bool:
        """Whether :meth:`replay_hooks` needs the membrane sequence (``CountedSteps.v_seq``)."""
        return True

    def replay_hooks(self, steps: CountedSteps) -> None:
        """Fire the framework's hooks once for a run's counted steps (only called when :meth:`framework_hooks`)."""

    @staticmethod
    @contextlib.contextmanager
    def hooks_silenced(module: nn.Module):
        """Run ``module`` without its forward (pre-)hooks: they are replayed after the run instead.

        Backward hooks and global hooks stay active.
        """
        saved = module.__dict__["_forward_pre_hooks"], module.__dict__["_forward_hooks"]
        module.__dict__["_forward_pre_hooks"], module.__dict__["_forward_hooks"] = {}, {}
        try:
            yield module
        finally:
            module.__dict__["_forward_pre_hooks"], module.__dict__["_forward_hooks"] = saved

    @staticmethod
    def fire_pre_hooks(module: nn.Module, args: tuple) -> None:
        """Call ``module``'s forward pre-hooks as ``module(*args)`` would (their return values cannot apply)."""
        kw = module._forward_pre_hooks_with_kwargs
        for hid, hook in list(module._forward_pre_hooks.items()):
            _ignored(hook, hook(module, args, {}) if hid in kw else hook(module, args))

    @staticmethod
    def fire_hooks(module: nn.Module, args: tuple, output) -> None:
        """Call ``module``'s forward hooks as ``module(*args)`` returning ``output`` would."""
        kw = module._forward_hooks_with_kwargs
        for hid, hook in list(module._forward_hooks.items()):
            _ignored(hook, hook(module, args, {}, output) if hid in kw else hook(module, args, output))

    def extra_repr(self) -> str:
        th = self.spec.threshold
        desc = f"{th:.4g}" if isinstance(th, float) else f"per-channel[{th.shape[0]}]"
        return f"backend={self.backend_name}, threshold={desc}"


def _ignored(hook, result) -> None:
    if result is not None:
        warnings.warn(f"the forward hook {getattr(hook, '__qualname__', hook)!r} on a converted model's neurons "
                      "returned a value: snnbridge fires framework hooks once after the run (for the counted steps), "
                      "so a hook cannot replace a neuron's input or output; the value was ignored. Change the SNN "
                      "through snnbridge (NeuronSpec, snn.set_spec) instead.", RuntimeWarning, stacklevel=3)
