"""snnTorch backend (``backend="snntorch"``): genuine ``snntorch.Leaky`` neurons.

Each site gets one ``snntorch.Leaky(beta=1.0, reset_mechanism='subtract', threshold=...)``
- snnTorch's integrate-and-fire with reset by subtraction - as a child module, driven step
by step the way snnTorch documents (``spk, mem = lif(x_t, mem)``).

How the spec is realized, and why:

* **Firing rule ``>=``.** snnTorch fires through ``spike_grad(mem - threshold)``; its own
  surrogates return ``(x > 0)``, i.e. fire on ``mem > threshold``, which differs from
  snnbridge's single rule at exact ties. ``spike_grad`` accepts any callable, so the layer
  passes :class:`FireGE`, an autograd function returning ``(x >= 0)`` with snnTorch's
  default arc-tangent surrogate gradient (``alpha = 2``). snnTorch applies the same callable
  to compute its reset signal, so firing and reset follow one rule.
* **Surrogates.** ``snn.set_surrogate(s)`` replaces the Leaky's ``spike_grad``: a
  :class:`snnbridge.Surrogate` as :class:`SnnTorchSurrogate`; snnTorch's own surrogates
  (``snntorch.surrogate.atan()`` ...), which fire on ``>``, wrapped in :class:`TiesFire` so ties
  fire; ``None`` restores :func:`fire_ge`. snnTorch detaches the reset signal
  (``mem_reset``), so the reset carries no gradient - the convention every backend follows.
* **Reset timing.** With the default ``reset_delay=True`` snnTorch computes
  ``mem_t = mem_{t-1} + x_t - reset_t * threshold`` with ``reset_t`` = the previous step's
  spike, and returns the *pre-reset* ``mem_t``; that is the reference neuron with
  ``m(t) = mem_t`` (``reset_delay=False`` is not: when the post-reset potential is still
  ``>= threshold`` it subtracts before deciding to fire). The post-reset potential the core
  asks for is ``mem_t - threshold * spk_t``. The two evaluation orders,
  ``(m + x) - theta*s`` here and ``(m - theta*s) + x`` in the reference, agree in exact
  arithmetic; in floating point the membrane may differ by rounding (about one ulp per
  step), which can move a spike only when ``m`` lands within that rounding of the
  threshold (measured: 2 spikes in 12.8 million float32 neuron-steps of random input).
  Values on a binary grid (the golden facts) are exact.
* **Initial potential.** snnTorch has no reset value, and its delayed reset would subtract
  the threshold at step 1 if the starting ``mem`` were ``>= threshold`` (possible: ``v0``
  may exceed the threshold). The layer therefore starts ``mem`` at zeros (full shape -
  snnTorch silently replaces a ``mem`` whose shape differs from the input by zeros) and adds
  ``v_init`` to the first step's input, which is exact: ``0 + (x_1 + v0) = v0 + x_1``.
* **Per-channel thresholds** become a threshold buffer of shape ``[C, 1, ...]`` that
  broadcasts against ``[B, C, ...]``; the buffer takes the input's dtype so ``float64``
  runs compare against the exact threshold.

Reset. Nothing needs resetting: every call of :meth:`SnnTorchLayer.simulate` starts from
the state it is given, and every run of a converted model from the specs' initial state.
The ``Leaky``'s own ``mem`` buffer holds the last step's membrane after a run (as in
snnTorch); ``leaky.reset_mem()`` zeroes it. ``snntorch.utils.reset(net)`` looks only at
``net``'s direct children, so ``snntorch.utils.reset(snn)`` finds no ``Leaky`` in a
converted model and does nothing; when it does find one (in a network of your own) it
zeroes the ``mem`` of every ``Leaky`` in the process, ours included - harmless for the
same reason.

Forward hooks on the ``Leaky`` (``spk_rec.append(spk)``): the runtime silences them during a
run and :meth:`SnnTorchLayer.replay_hooks` calls them once per counted step afterwards
(:mod:`snnbridge.neurons`), so ``torch.stack(spk_rec)`` is ``[T, B, ...]`` whatever the time
chunks, without warm-up or look-ahead steps.

No conversion method lives here: this module only realizes a :class:`~snnbridge.NeuronSpec`.
"""

from __future__ import annotations

import importlib
import math

import torch

from snnbridge import BackendError, NeuronLayer, PluginInfo, SimResult, Surrogate, firing_rule, hookimpl

NAME = "snntorch"
#: arc-tangent surrogate width, snnTorch's default (``snntorch.surrogate.atan(alpha=2.0)``)
ATAN_ALPHA = 2.0


def _import_snntorch():
    try:
        return importlib.import_module("snntorch")
    except Exception as exc:
        raise BackendError(
            f"backend 'snntorch' needs the snntorch package, which cannot be imported here ({type(exc).__name__}: "
            f"{exc}). Install it with `pip install snntorch`, or choose backend='torch' or backend='spikingjelly'."
        ) from exc


class FireGE(torch.autograd.Function):
    """Spike ``(x >= 0)`` (ties fire) with snnTorch's arc-tangent surrogate gradient.

    ``x`` is ``mem - threshold``; the forward returns spikes in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        a = ATAN_ALPHA
        return grad_output * (a / 2) / (1 + (math.pi / 2 * a * x).pow(2))


def fire_ge(x: torch.Tensor) -> torch.Tensor:
    """The ``spike_grad`` callable handed to ``snntorch.Leaky``."""
    return FireGE.apply(x)


class SnnTorchSurrogate:
    """A :class:`snnbridge.Surrogate` as snnTorch's ``spike_grad`` (``snntorch.Leaky(spike_grad=...)``): fires on
    ``x >= 0``, gradient through the surrogate's derivative."""

    def __init__(self, surrogate: Surrogate):
        #: the framework-neutral surrogate this callable applies
        self.surrogate = surrogate

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate(x)

    def __repr__(self) -> str:
        return f"SnnTorchSurrogate({self.surrogate!r})"


class TiesFire:
    """An snnTorch ``spike_grad`` that fires on ``x > 0`` (every ``snntorch.surrogate`` function does), made to fire
    on ``x >= 0``: a detached 1 is added where ``x == 0`` and it gave 0, so its gradient is unchanged; the
    spikes take ``x``'s dtype (snnTorch's are float32)."""

    def __init__(self, spike_grad):
        #: the wrapped snnTorch spike_grad
        self.spike_grad = spike_grad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spike_grad(x)
        tie = ((x == 0) & (s == 0)).to(s.dtype)
        return (s + tie).to(x.dtype)

    def __repr__(self) -> str:
        return f"TiesFire({getattr(self.spike_grad, '__qualname__', self.spike_grad)!r})"


def _fires(fn) -> str | None:
    """The firing rule of a spike function (:func:`snnbridge.surrogates.firing_rule`)."""
    return firing_rule(fn)


class SnnTorchLayer(NeuronLayer):
    """One genuine ``snntorch.Leaky`` (beta = 1, subtract reset) realizing one site's spec."""

    backend_name = NAME
    differentiable = True  # snnTorch's arc-tangent surrogate (FireGE's backward)

    def __init__(self, spec):
        super().__init__(spec)
        snn = _import_snntorch()
        th = spec.threshold
        if isinstance(th, float):
            self._threshold_c = None
            init = th
        else:
            self.register_buffer("_threshold_c", th.clone(), persistent=False)
            init = th.clone()
        self.leaky = snn.Leaky(beta=1.0, threshold=init, spike_grad=fire_ge, reset_mechanism="subtract",
                               reset_delay=True)

    def set_surrogate(self, surrogate) -> None:
        """Make ``surrogate`` (a ``spike_grad`` from :func:`snnbridge_wrap_surrogate`) the Leaky's ``spike_grad``;
        None restores :func:`fire_ge` (snnTorch's arc-tangent, alpha 2, firing on ``>=``)."""
        self.leaky.spike_grad = fire_ge if surrogate is None else surrogate
        self._keep_surrogate(surrogate)

    def _threshold_for(self, like: torch.Tensor) -> torch.Tensor:
        """The threshold broadcastable against one step ``like`` ([B, C, ...]), in its dtype."""
        if self._threshold_c is None:
            return torch.tensor(self.spec.threshold, dtype=like.dtype, device=like.device)
        if like.dim() < 2 or like.shape[1] != self._threshold_c.shape[0]:
            raise BackendError(f"a per-channel threshold of {self._threshold_c.shape[0]} channels does not fit input "
                               f"steps shaped {tuple(like.shape)} (channels on dimension 1).")
        shape = [self._threshold_c.shape[0]] + [1] * (like.dim() - 2)
        return self._threshold_c.to(device=like.device, dtype=like.dtype).view(shape)

    def simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool = False) -> SimResult:
        if self.deferring_hooks:  # forward hooks see the counted steps once, after the run (replay_hooks)
            with self.hooks_silenced(self.leaky):
                return self._simulate(x_seq, v_init, return_v)
        return self._simulate(x_seq, v_init, return_v)

    def _simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool) -> SimResult:
        leaky = self.leaky
        th = self._threshold_for(x_seq[0])
        resting = leaky.threshold
        leaky.threshold = th  # for this run only: the stored buffer keeps its shape, so state_dicts stay loadable
        try:
            mem = torch.zeros_like(x_seq[0])  # full shape, below threshold: no reset at step 1
            if torch.is_grad_enabled() and (x_seq.requires_grad or v_init.requires_grad or th.requires_grad):
                return self._simulate_differentiable(x_seq, v_init, mem, th, return_v)
            out = torch.empty_like(x_seq)  # the weighted spikes th * spk the runtime passes on
            v_seq = torch.empty_like(x_seq) if return_v else None
            for t in range(x_seq.shape[0]):
                x_t = x_seq[0] + v_init if t == 0 else x_seq[t]
                spk, mem = leaky(x_t, mem)
                torch.mul(spk, th, out=out[t])
                if v_seq is not None:
                    torch.sub(mem, out[t], out=v_seq[t])
            v_last = mem - out[-1]
        finally:
            leaky.threshold = resting
        return SimResult(output=out, v_last=v_last, v_seq=v_seq)

    def _simulate_differentiable(self, x_seq, v_init, mem, th, return_v) -> SimResult:
        """The same loop without in-place writes, so snnTorch's surrogate gradients reach the input."""
        spikes, volts = [], []
        for t in range(x_seq.shape[0]):
            spk, mem = self.leaky(x_seq[0] + v_init if t == 0 else x_seq[t], mem)
            spikes.append(spk)
            if return_v:
                volts.append(mem - th * spk)
        return SimResult(spikes=torch.stack(spikes), v_last=mem - th * spikes[-1],
                         v_seq=torch.stack(volts) if return_v else None)

    # -- forward hooks on the Leaky (spk_rec / mem_rec recording) ------------------------------------
    def framework_hooks(self) -> bool:
        return bool(self.leaky._forward_hooks or self.leaky._forward_pre_hooks)

    def replay_hooks(self, steps) -> None:
        """Call the Leaky's hooks once per counted step, as ``spk, mem = leaky(x_t, mem)`` would.

        Arguments ``(x_t, mem_{t-1})`` (``mem`` before the first counted step: the initial
        potential), output ``(spk_t, mem_t)`` with snnTorch's pre-reset ``mem_t = v_t + threshold
        * spk_t`` (equal to the run's own value up to float rounding).
        """
        leaky = self.leaky
        th = self._threshold_for(steps.drive[0])
        mem = steps.v_start
        for t in range(steps.drive.shape[0]):
            args = (steps.drive[t], mem)
            self.fire_pre_hooks(leaky, args)
            spk = steps.spikes[t]
            mem = steps.v_seq[t] + th * spk
            leaky.mem = mem
            self.fire_hooks(leaky, args, (spk, mem))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule='>=' (FireGE), reset_delay=True"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="snnTorch Leaky neurons (beta=1, reset by subtraction, fire on >=)", kind="backend",
                      provides=("backend",), reference="https://github.com/jeshraghian/snntorch")


@hookimpl
def snnbridge_make_neuron(spec, options):
    return SnnTorchLayer(spec)


@hookimpl
def snnbridge_wrap_surrogate(surrogate):
    """A ``spike_grad``: a :class:`snnbridge.Surrogate` in :class:`SnnTorchSurrogate`; an snnTorch surrogate
    (``snntorch.surrogate.atan()`` ...), which fires on ``>``, in :class:`TiesFire`; a callable firing on ``>=`` as
    it is."""
    if isinstance(surrogate, Surrogate):
        return SnnTorchSurrogate(surrogate)
    if isinstance(surrogate, (SnnTorchSurrogate, TiesFire)):
        return surrogate
    what = f"{type(surrogate).__module__}.{type(surrogate).__qualname__}"
    if isinstance(getattr(surrogate, "surrogate", None), Surrogate):
        raise BackendError(f"{what} is another framework's wrapper of {surrogate.surrogate!r}; on the snntorch "
                           "backend pass the snnbridge.Surrogate itself (snnbridge.surrogate(recipe)) or "
                           "snnbridge.surrogate(recipe, framework='snntorch').")
    if type(surrogate).__module__.split(".")[0] == "spikingjelly":
        raise BackendError(f"{what} is a SpikingJelly surrogate, which works on the spikingjelly backend only; on the "
                           "snntorch backend use an snnTorch spike_grad (snntorch.surrogate.atan()) or a "
                           "snnbridge.Surrogate (snnbridge.surrogate({'sg': {'shape': 'atan'}})).")
    if not callable(surrogate):
        raise BackendError(f"snnTorch neurons take a spike_grad callable (snntorch.surrogate.atan()) or a "
                           f"snnbridge.Surrogate, got {what}.")
    rule = _fires(surrogate)
    if rule == ">=":
        return surrogate
    if rule == ">":
        return TiesFire(surrogate)
    raise BackendError(f"the spike_grad {getattr(surrogate, '__qualname__', what)} does not return 0/1 spikes on "
                       "x = -1, 0, 1; snnTorch neurons take a spike function of mem - threshold (snntorch.surrogate.*) "
                       "or a snnbridge.Surrogate.")
