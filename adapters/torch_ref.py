"""The plain-torch reference backend (``backend="torch"``).

A direct transcription of the IF neuron of :mod:`snnbridge.spec`: no framework, so it is
the yardstick the other adapters are tested against. Per step it writes the weighted spikes
``threshold * s`` the runtime passes on (nobody multiplies the whole sequence again) into a
preallocated output, and updates the membrane in place on its own copy.

Gradients. With a surrogate set (``snn.set_surrogate(s)``, ``s`` a :class:`snnbridge.Surrogate`)
a run that needs gradients takes an out-of-place loop: spikes ``s(m - threshold)`` (the same
``>=`` spikes and membranes as the in-place loop, bit for bit), reset ``m - threshold *
s.detach()`` (the reset carries no gradient, as in snnTorch's ``Leaky`` and the SpikingJelly
adapter, so gradients agree across backends). Without a surrogate the layer is not
differentiable and the runtime refuses such a run; under ``torch.no_grad()`` the in-place loop
runs either way.

Option ``compile``: fuse each step's update (add, compare, scale, subtract) into one kernel with
``torch.compile`` (dynamic shapes, so one compilation serves every site and batch size), same
spikes bit for bit; the first call of a process compiles for about 10 s. Off by default: since
the eager loop writes its comparison straight into the float output (a bool mask times the
threshold cost a dtype conversion, most of the update), eager is the faster of the two on CPU
(a 64 x 32 x 32 x 32 state: 3.3 ms per step eager, 5.2 ms compiled, 2 cores; the small VGG's SNN /
(T x ANN) at batch 32-128: eager 0.92-1.20, compiled 1.01-1.40). Where compiling fails (no C++
compiler, an unsupported platform) the layer warns once and runs the eager loop.
"""

from __future__ import annotations

import warnings

import torch

from snnbridge import BackendError, NeuronLayer, Option, PluginInfo, SimResult, Surrogate, hookimpl

NAME = "torch"


def if_step(v: torch.Tensor, x: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One IF step with reset by subtraction: returns the new membrane and the weighted spikes."""
    v = v + x
    out = (v >= threshold).to(v.dtype) * threshold
    return v - out, out


_compiled = {"step": None, "failed": False}


def _compiled_step():
    if _compiled["step"] is None:
        _compiled["step"] = torch.compile(if_step, dynamic=True)
    return _compiled["step"]


class TorchIFLayer(NeuronLayer):
    """Integrate-and-fire with reset by subtraction, fire on ``v >= threshold``."""

    backend_name = NAME

    def __init__(self, spec, compile: bool = False):
        super().__init__(spec)
        self.compile = bool(compile)

    @property
    def differentiable(self) -> bool:
        """Gradients pass only with a surrogate set (:meth:`set_surrogate`)."""
        return self.surrogate is not None

    def set_surrogate(self, surrogate) -> None:
        """Use ``surrogate`` (a :class:`snnbridge.Surrogate`) when gradients are needed; None: no gradient."""
        if surrogate is not None and not isinstance(surrogate, Surrogate):
            raise BackendError(f"the torch backend takes a snnbridge.Surrogate, got {type(surrogate).__name__}.")
        self._keep_surrogate(surrogate)

    def simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool = False) -> SimResult:
        th = self.spec.threshold_tensor(x_seq[0], 1)
        if isinstance(th, float):  # a 0-d tensor of the input's dtype: float64 runs compare exactly
            th = torch.tensor(th, dtype=x_seq.dtype, device=x_seq.device)
        if self.surrogate is not None and torch.is_grad_enabled() and (x_seq.requires_grad or v_init.requires_grad):
            return self._simulate_differentiable(x_seq, v_init, th, return_v)
        if self.compile and not _compiled["failed"] and not torch.is_grad_enabled():
            try:
                return self._simulate_compiled(x_seq, v_init, th, return_v)
            except Exception as exc:  # the compiler is missing or refuses this platform: the eager loop is exact too
                _compiled["failed"] = True
                warnings.warn(f"torch backend: compile is not available here ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); running the eager neuron update.",
                              RuntimeWarning, stacklevel=2)
        # m = v + x; s = m >= th; v = m - th * s, as out = th * s; v -= out. The first step is out of
        # place (v_init is the caller's), the rest in place on that copy. The comparison writes 0/1 straight
        # into the float output: a bool mask times th costs a dtype conversion, ~10x the whole update.
        out = torch.empty_like(x_seq)
        v_seq = torch.empty_like(x_seq) if return_v else None
        v = v_init + x_seq[0]
        for t in range(x_seq.shape[0]):
            if t:
                v.add_(x_seq[t])
            o = out[t]
            torch.ge(v, th, out=o)
            o.mul_(th)
            v.sub_(o)
            if v_seq is not None:
                v_seq[t] = v
        return SimResult(output=out, v_last=v, v_seq=v_seq)

    def _simulate_differentiable(self, x_seq, v_init, th, return_v) -> SimResult:
        """Out of place, spikes through the surrogate: ``m = v + x``, ``s = surrogate(m - th)``,
        ``v = m - th * s.detach()``."""
        surrogate = self.surrogate
        v = v_init
        spikes, volts = [], []
        for t in range(x_seq.shape[0]):
            m = v + x_seq[t]
            s = surrogate(m - th)
            v = m - s.detach() * th
            spikes.append(s)
            if return_v:
                volts.append(v)
        return SimResult(spikes=torch.stack(spikes), v_last=v, v_seq=torch.stack(volts) if return_v else None)

    def _simulate_compiled(self, x_seq, v_init, th, return_v) -> SimResult:
        step = _compiled_step()
        out = torch.empty_like(x_seq)
        v_seq = torch.empty_like(x_seq) if return_v else None
        v = v_init
        for t in range(x_seq.shape[0]):
            v, out[t] = step(v, x_seq[t], th)
            if v_seq is not None:
                v_seq[t] = v
        return SimResult(output=out, v_last=v, v_seq=v_seq)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", compile=True" if self.compile else "")


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="plain-torch reference IF neurons (soft reset, v >= threshold)", kind="backend",
                      provides=("backend",))


@hookimpl
def snnbridge_add_options():
    return [Option("compile", bool, False, "fuse each step's neuron update with torch.compile (bit-identical; about "
                   "10 s to compile once per process; falls back to eager with a warning)")]


@hookimpl
def snnbridge_make_neuron(spec, options):
    return TorchIFLayer(spec, compile=options.get("compile", False))


@hookimpl
def snnbridge_wrap_surrogate(surrogate):
    """The torch backend takes the framework-neutral :class:`snnbridge.Surrogate` itself."""
    if isinstance(surrogate, Surrogate):
        return surrogate
    inner = getattr(surrogate, "surrogate", None)
    what = f"{type(surrogate).__module__}.{type(surrogate).__qualname__}"
    if isinstance(inner, Surrogate):
        raise BackendError(f"the torch backend takes a snnbridge.Surrogate, got {what} (another framework's wrapper "
                           f"of {inner!r}); pass snnbridge.surrogate(recipe) (framework='torch') or its .surrogate.")
    raise BackendError(f"the torch backend takes a snnbridge.Surrogate (snnbridge.surrogate(recipe), e.g. "
                       f"snnbridge.surrogate('localzo')), got {what}; framework surrogates (SpikingJelly, snnTorch) "
                       "work only on their own backend.")
