"""SpikingJelly backend (``backend="spikingjelly"``): genuine ``activation_based.neuron`` modules.

Every site gets real SpikingJelly neurons in multi-step mode (``step_mode='m'``) with reset
by subtraction (``v_reset=None``), held as child modules of the layer, so SpikingJelly's own
tools work on a converted model: ``functional.reset_net`` (resets them),
``functional.set_step_mode`` (``'s'`` makes :meth:`SpikingJellyLayer.simulate` drive them
one step at a time; the result is the same), monitors, ``isinstance`` checks.

Monitors (``monitor.OutputMonitor``, ``InputMonitor``, ``AttributeMonitor``) hook the
neuron modules; the runtime calls them several times per run (time chunks, a warm-up, a
look-ahead). While hooks are attached, the layer runs its neurons with the hooks silenced
and :meth:`SpikingJellyLayer.replay_hooks` fires them once per run with the counted steps
(:mod:`snnbridge.neurons`), so a monitor gets one ``[T, B, ...]`` record per neuron module
per forward: 0/1 spikes, the drive as input, ``v_seq`` with ``store_v_seq=True``. Without
hooks nothing changes (one flag test per call). Which classes to monitor:
``neuron.IFNode`` (scalar thresholds) and ``neuron.ActivationAwareIFNode`` (per-channel, 2.x;
not a ``BaseNode``); on 0.0.0.0.14 a per-channel site has one ``IFNode`` per channel group,
each recording its own channels (:meth:`SpikingJellyLayer.node_channels`).

Two generations of SpikingJelly are supported; which one is installed is detected when a
layer is built (the 0.0.0.0.x neurons take a ``backend=`` argument, the 2.x ones do not).

SpikingJelly >= 2.0
    No ``backend`` argument: the kernel is chosen per device by SpikingJelly (CPU: its torch
    reference; CUDA: native extension, then Triton, then torch). CuPy was removed.
    Thresholds of ``IFNode`` must be Python floats, so

    * a scalar threshold gives ``neuron.IFNode(v_threshold=float(theta), v_reset=None)``;
    * a per-channel threshold gives ``neuron.ActivationAwareIFNode(v_threshold=<[C] tensor>,
      v_offset=0.0, channel_dim=1, v_reset=None)``. Its rule is ``h + offset >= theta_c``
      and ``v = h - s * theta_c`` with ``h = v + x`` and ``channel_dim`` counted in one
      step's ``[B, C, ...]`` layout (the multi-step kernel adds the time dimension itself);
      with ``offset = 0`` this is the reference neuron operation for operation, so spikes
      and potentials are bit-identical. SpikingJelly's converter trick (scale the input by
      ``1/theta_c``, fire at 1, scale back) was not used: the division rounds, so spikes
      near the threshold can differ from the reference.

SpikingJelly 0.0.0.0.14
    ``neuron.IFNode(..., backend='torch'|'cupy')``. Thresholds must be Python floats on every
    path (the constructor asserts it, and the TorchScript and CuPy kernels take a ``float``),
    and there is no per-channel neuron, so a per-channel threshold is realized by *channel
    groups*: one genuine ``IFNode(v_threshold=float(value))`` per distinct threshold value,
    each run on the channels that share that value (gathered and scattered back along the
    channel dimension). Element-wise dynamics make this exact; the cost is one kernel call
    per distinct value. Note that 0.0.0.0.14 uses its CuPy kernel only for modules in
    training mode; with ``kernel="cupy"`` the layer switches its neurons to training mode
    for the duration of a call (they hold no other train/eval-dependent state).

Firing rule. Every path fires on ``v >= threshold`` as snnbridge requires: the torch paths
compute ``heaviside(h - theta)`` with ``heaviside(0) = 1`` (or ``h >= theta`` directly) and
the CuPy kernel ``(h - v_th) >= 0.0f ? 1 : 0`` - checked against the reference at exact
ties in the tests.

Initial state. The core passes a full-shape ``v_init``; it is assigned to the neuron's
``v`` before the run (SpikingJelly >= 2.0 silently replaces a state whose shape differs
from one input step by zeros, so it must be full shape). ``return_v`` turns on
``store_v_seq``, whose ``v_seq`` is the membrane after each step's reset.

Surrogate gradients. The nodes keep SpikingJelly's default ``surrogate.Sigmoid()`` and are built
with ``detach_reset=True``: the reset by subtraction carries no gradient, as in snnTorch's
``Leaky`` (which always detaches it) and the torch backend, so one surrogate gives the same
gradients on every backend. ``snn.set_surrogate(s)`` sets every node's ``surrogate_function``:
a :class:`snnbridge.Surrogate` is wrapped in ``SpikingJellySurrogate`` (a
``surrogate.SurrogateFunctionBase``, so a valid ``surrogate_function`` for any SpikingJelly
neuron); SpikingJelly's own surrogates (``surrogate.ATan()`` ...) are taken as they are. Only
the seven built-ins run SpikingJelly's registered IF operator; any other surrogate runs its
Torch reference loop (on CPU with gradients the built-ins do too). With gradients,
``ActivationAwareIFNode`` always runs its Torch reference step loop (its registered operator is
forward-only); it works on CPU, with every surrogate.

Adapter option ``kernel``: ``auto`` (default; SpikingJelly's own choice - automatic on 2.x,
``backend='torch'`` on 0.0.0.0.14), ``torch``, ``cupy`` (0.0.0.0.14 with CuPy and a CUDA
device only), ``triton`` / ``cuda`` (2.x on CUDA tensors; SpikingJelly 2 selects these per
neuron family through the environment variables ``SJ_IF_CUDA_IMPLEMENTATION`` and
``SJ_ACTIVATION_AWARE_IF_CUDA_IMPLEMENTATION``, read when it is imported, so the adapter
checks that they agree instead of silently running another kernel).

No conversion method lives here: this module only realizes a :class:`~snnbridge.NeuronSpec`.
"""

from __future__ import annotations

import importlib
import inspect
import os

import torch
from torch import nn

from snnbridge import BackendError, NeuronLayer, Option, PluginInfo, SimResult, Surrogate, firing_rule, hookimpl

NAME = "spikingjelly"
KERNELS = ("auto", "torch", "cupy", "triton", "cuda")
LEGACY = "0.0.0.0.x"
MODERN = "2.x"

#: environment variables through which SpikingJelly 2 selects CUDA kernels, per neuron class
_ENV = {"IFNode": "SJ_IF_CUDA_IMPLEMENTATION", "ActivationAwareIFNode": "SJ_ACTIVATION_AWARE_IF_CUDA_IMPLEMENTATION"}


def _import_neuron_module():
    try:
        return importlib.import_module("spikingjelly.activation_based.neuron")
    except Exception as exc:  # ImportError, or a broken install failing inside its import
        raise BackendError(
            f"backend 'spikingjelly' needs the spikingjelly package, which cannot be imported here "
            f"({type(exc).__name__}: {exc}). Install it with `pip install 'spikingjelly>=2.0'` (or "
            "`pip install spikingjelly==0.0.0.0.14` for its CuPy kernels), or choose backend='torch' or "
            "backend='snntorch'.") from exc


def generation(neuron_module=None) -> str:
    """``"2.x"`` or ``"0.0.0.0.x"``: the installed SpikingJelly's neuron API generation."""
    neuron_module = neuron_module or _import_neuron_module()
    params = inspect.signature(neuron_module.IFNode.__init__).parameters
    return LEGACY if "backend" in params else MODERN


def _sj_version() -> str:
    try:
        import importlib.metadata as md
        return md.version("spikingjelly")
    except Exception:
        return "?"


def _legacy_cupy_missing() -> list[str]:
    """What SpikingJelly 0.0.0.0.14's CuPy kernel lacks here (empty when it can run)."""
    missing = []
    hint = "install the wheel matching your CUDA toolkit, e.g. `pip install cupy-cuda12x`, then restart Python"
    try:
        importlib.import_module("cupy")
    except Exception as exc:
        missing.append(f"CuPy (`import cupy` fails: {type(exc).__name__}: {exc}; {hint})")
    else:
        base = importlib.import_module("spikingjelly.activation_based.base")
        if getattr(base, "cupy", None) is None:  # SpikingJelly imports CuPy once, when it is imported itself
            missing.append(f"CuPy as seen by SpikingJelly (it could not import CuPy when it was imported; {hint})")
    if not torch.cuda.is_available():
        missing.append("a CUDA device (torch.cuda.is_available() is False; CuPy kernels run only on NVIDIA GPUs)")
    return missing


def _check_kernel(kernel: str, gen: str) -> None:
    """Refuse kernel choices the installed generation cannot honour (at build time)."""
    if gen == MODERN:
        if kernel == "cupy":
            raise BackendError(
                f"kernel='cupy' is not available: SpikingJelly {_sj_version()} (2.x) removed CuPy; its kernels are "
                "chosen automatically (CPU: torch reference, CUDA: native extension or Triton). Use kernel='auto'. "
                "For the CuPy kernels install SpikingJelly 0.0.0.0.14 instead (`pip install spikingjelly==0.0.0.0.14` "
                "plus `pip install cupy-cuda12x` matching your CUDA) on a machine with an NVIDIA GPU.")
    else:
        if kernel in ("triton", "cuda"):
            raise BackendError(
                f"kernel={kernel!r} needs SpikingJelly 2.x; the installed SpikingJelly {_sj_version()} has only the "
                "'torch' and 'cupy' kernels. Use kernel='auto', 'torch' or 'cupy', or upgrade with "
                "`pip install 'spikingjelly>=2.0'`.")
        if kernel == "cupy":
            missing = _legacy_cupy_missing()
            if missing:
                raise BackendError(f"kernel='cupy' (SpikingJelly {_sj_version()}) needs CuPy and a CUDA device; "
                                   "missing here: " + "; ".join(missing) + ". Or use kernel='auto' (torch kernels).")


class SpikingJellyLayer(NeuronLayer):
    """Genuine SpikingJelly IF neurons (soft reset, multi-step) realizing one site's spec.

    ``nodes`` holds the SpikingJelly modules: one ``IFNode`` (scalar threshold), one
    ``ActivationAwareIFNode`` (per-channel, SpikingJelly 2.x) or one ``IFNode`` per
    distinct threshold value (per-channel, SpikingJelly 0.0.0.0.14; ``groups`` then holds
    the channel indices of each node).
    """

    backend_name = NAME
    differentiable = True  # SpikingJelly's surrogate gradient (the neurons' default, Sigmoid)

    def __init__(self, spec, kernel: str = "auto"):
        super().__init__(spec)
        neuron = _import_neuron_module()
        self.generation = generation(neuron)
        _check_kernel(kernel, self.generation)
        self.kernel = kernel
        th = spec.threshold
        self.groups: list[str] = []
        nodes = []
        if self.generation == MODERN:
            if isinstance(th, float):
                nodes.append(neuron.IFNode(v_threshold=float(th), v_reset=None, step_mode="m", detach_reset=True))
            else:
                nodes.append(neuron.ActivationAwareIFNode(v_threshold=th.clone(), v_offset=0.0, channel_dim=1,
                                                          v_reset=None, step_mode="m", detach_reset=True))
        else:
            sj_backend = "cupy" if kernel == "cupy" else "torch"
            if isinstance(th, float):
                nodes.append(neuron.IFNode(v_threshold=float(th), v_reset=None, step_mode="m", backend=sj_backend,
                                           detach_reset=True))
            else:
                values, inverse = torch.unique(th, return_inverse=True)
                for k, value in enumerate(values.tolist()):
                    nodes.append(neuron.IFNode(v_threshold=float(value), v_reset=None, step_mode="m",
                                               backend=sj_backend, detach_reset=True))
                    name = f"group_{k}"
                    self.register_buffer(name, (inverse == k).nonzero().flatten(), persistent=False)
                    self.groups.append(name)
        self.nodes = nn.ModuleList(nodes)
        #: SpikingJelly 2 choosing its kernel itself: no kernel check or mode switch per call
        self._plain = self.generation == MODERN and kernel == "auto"

    # -- surrogate gradients -------------------------------------------------------------------------
    def set_surrogate(self, surrogate) -> None:
        """Make ``surrogate`` (a ``surrogate_function`` module from :func:`snnbridge_wrap_surrogate`) every node's
        ``surrogate_function``; None restores SpikingJelly's default, ``surrogate.Sigmoid()`` (alpha 4)."""
        if surrogate is not None and self.kernel == "cupy" and not _native(surrogate):
            raise BackendError("SpikingJelly 0.0.0.0.14's CuPy kernel generates code for its own surrogates only; "
                               "use kernel='auto' (torch) with this surrogate, or a spikingjelly surrogate.")
        if surrogate is not None and self.kernel in ("triton", "cuda") and not _built_in(surrogate):
            raise BackendError(f"kernel={self.kernel!r} runs SpikingJelly's fused kernels, which know only its seven "
                               f"built-in surrogates ({', '.join(BUILT_IN_SURROGATES)}); use kernel='auto' with this "
                               "surrogate (SpikingJelly then runs its Torch reference loop).")
        module = surrogate if surrogate is not None else _import_surrogate_module().Sigmoid()
        for node in self.nodes:
            node.surrogate_function = module
        self._keep_surrogate(surrogate)

    # -- running ------------------------------------------------------------------------------------
    def simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool = False) -> SimResult:
        if not self.groups:
            spikes, v_last, v_seq = self._run(self.nodes[0], x_seq, v_init, return_v)
            return self._result(spikes, v_last, v_seq)
        if x_seq.dim() < 3:
            raise BackendError(f"a per-channel threshold needs a channel dimension, but the input steps have shape "
                               f"{tuple(x_seq.shape[1:])}.")
        spikes = torch.empty_like(x_seq)
        v_last = torch.empty_like(v_init)
        v_seq = torch.empty_like(x_seq) if return_v else None
        for node, name in zip(self.nodes, self.groups):
            idx = getattr(self, name)
            s, v, vs = self._run(node, x_seq.index_select(2, idx), v_init.index_select(1, idx), return_v)
            spikes.index_copy_(2, idx, s.to(spikes.dtype))
            v_last.index_copy_(1, idx, v.to(v_last.dtype))
            if v_seq is not None:
                v_seq.index_copy_(2, idx, vs.to(v_seq.dtype))
        return self._result(spikes, v_last, v_seq)

    def _result(self, spikes, v_last, v_seq) -> SimResult:
        """Outside autograd, scale SpikingJelly's fresh spike tensor in place into the weighted spikes the
        runtime passes on (one allocation and one pass fewer); with gradients, keep the spikes."""
        if torch.is_grad_enabled() and spikes.requires_grad:
            return SimResult(spikes=spikes, v_last=v_last, v_seq=v_seq)
        th = self.spec.threshold_tensor(spikes, 2)
        return SimResult(output=spikes.mul_(th), v_last=v_last, v_seq=v_seq)

    def _run(self, node, x_seq, v_init, return_v):
        if self._plain and not return_v and node.step_mode == "m" and not self.deferring_hooks:  # the common case
            node.v = v_init
            return node(x_seq), node.v, None
        if self.deferring_hooks:  # monitors see the whole run once, afterwards (replay_hooks)
            with self.hooks_silenced(node):
                return self._run_checked(node, x_seq, v_init, return_v)
        return self._run_checked(node, x_seq, v_init, return_v)

    def _run_checked(self, node, x_seq, v_init, return_v):
        self._check_device_kernel(node, x_seq)
        cupy = self.generation == LEGACY and getattr(node, "backend", "torch") == "cupy"
        was_training = node.training
        if cupy:
            node.train(True)  # 0.0.0.0.14 runs CuPy only in training mode (eval always uses TorchScript)
        try:
            node.v = v_init  # full shape: kept as the initial state (a broadcast shape would be zeroed)
            if node.step_mode == "m":
                user = node.store_v_seq  # the user's own setting is kept (monitors read v_seq)
                if return_v and not user:
                    node.store_v_seq = True
                spikes = node(x_seq)
                v_seq = node.v_seq if return_v else None
                if return_v and not user:
                    node.store_v_seq = False
            else:  # functional.set_step_mode(net, 's'): drive the same neuron one step at a time
                steps, volts = [], []
                for t in range(x_seq.shape[0]):
                    steps.append(node(x_seq[t]))
                    if return_v:
                        volts.append(node.v)
                spikes = torch.stack(steps)
                v_seq = torch.stack(volts) if return_v else None
            v_last = node.v
        finally:
            if cupy:
                node.train(was_training)
        return spikes, v_last, v_seq

    # -- monitors -------------------------------------------------------------------------------------
    def node_channels(self) -> list[torch.Tensor | None]:
        """Per node in ``nodes``: the channel indices it runs on (dimension 2 of ``[T, B, C, ...]``), None = all."""
        if not self.groups:
            return [None] * len(self.nodes)
        return [getattr(self, name) for name in self.groups]

    def framework_hooks(self) -> bool:
        return any(n._forward_hooks or n._forward_pre_hooks for n in self.nodes)

    def hooks_need_v(self) -> bool:
        """``v_seq`` for ``store_v_seq`` nodes; per-step ``v`` for single-step nodes."""
        return any(n.store_v_seq or n.step_mode == "s" for n in self.nodes if n._forward_hooks or n._forward_pre_hooks)

    def replay_hooks(self, steps) -> None:
        """Fire each monitored node's hooks as SpikingJelly would for one pass over the counted steps.

        Multi-step nodes: one call with the ``[T, B, ...]`` input and 0/1 spikes; ``v`` is the
        starting membrane for pre-hooks and the last one afterwards, ``v_seq`` (with
        ``store_v_seq``) the ``[T, B, ...]`` membrane after each step's reset. Single-step nodes
        (``functional.set_step_mode(net, 's')``): one call per step. Channel groups
        (SpikingJelly 0.0.0.0.14, per-channel thresholds) see the channels of their group.
        """
        for k, node in enumerate(self.nodes):
            if not (node._forward_hooks or node._forward_pre_hooks):
                continue
            x, s, v_seq, v0, v1 = steps.drive, steps.spikes, steps.v_seq, steps.v_start, steps.v_last
            if self.groups:
                idx = getattr(self, self.groups[k])
                x, s = x.index_select(2, idx), s.index_select(2, idx)
                v0, v1 = v0.index_select(1, idx), v1.index_select(1, idx)
                v_seq = v_seq.index_select(2, idx) if v_seq is not None else None
            if node.step_mode == "m":
                node.v = v0
                self.fire_pre_hooks(node, (x,))
                node.v = v1
                if node.store_v_seq and v_seq is not None:
                    node.v_seq = v_seq
                self.fire_hooks(node, (x,), s)
                continue
            node.v = v0
            for t in range(x.shape[0]):
                self.fire_pre_hooks(node, (x[t],))
                node.v = v_seq[t]
                if node.store_v_seq:
                    node.v_seq = v_seq[:t + 1]
                self.fire_hooks(node, (x[t],), s[t])

    def _check_device_kernel(self, node, x_seq):
        kernel = self.kernel
        if self.generation == LEGACY:
            # the neuron's own ``backend`` decides (``functional.set_backend`` may have changed it)
            if getattr(node, "backend", "torch") == "cupy" and node.step_mode == "m":
                if not x_seq.is_cuda or x_seq.dtype not in (torch.float32, torch.float16):
                    raise BackendError(
                        f"the CuPy kernel runs on CUDA float32/float16 tensors, got a {x_seq.dtype} tensor on "
                        f"{x_seq.device}. Move the model and the input to the GPU (snn.cuda(), x.cuda()), or use the "
                        "torch kernel (kernel='auto', or functional.set_backend(net, 'torch') after set_backend).")
            return
        if kernel == "auto":
            return
        if kernel == "torch" and not x_seq.is_cuda:
            return  # SpikingJelly 2 always runs its torch reference on CPU
        if not x_seq.is_cuda:
            raise BackendError(f"kernel={kernel!r} runs on CUDA tensors, got a tensor on {x_seq.device}; move the "
                               "model and input to the GPU, or use kernel='auto' (on CPU SpikingJelly 2 runs its torch "
                               "reference).")
        var = _ENV[type(node).__name__]
        chosen = os.environ.get(var, "auto")
        if chosen != kernel:
            raise BackendError(
                f"kernel={kernel!r}: SpikingJelly 2 picks the CUDA kernel of {type(node).__name__} from the "
                "environment "
                f"variable {var} (now {chosen!r}), read when spikingjelly is imported. Set {var}={kernel} before "
                "starting Python, or use kernel='auto'.")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, spikingjelly={self.generation}, kernel={self.kernel}"


# -- surrogate gradients -------------------------------------------------------------------------------------------


def _import_surrogate_module():
    _import_neuron_module()  # the BackendError when SpikingJelly is missing
    return importlib.import_module("spikingjelly.activation_based.surrogate")


def _native(obj) -> bool:
    """A SpikingJelly surrogate module (``spikingjelly.activation_based.surrogate.*``)."""
    return type(obj).__module__.split(".")[0] == "spikingjelly"


#: the surrogates SpikingJelly 2's fused kernels implement (``spikingjelly/_ops/surrogate.py``)
BUILT_IN_SURROGATES = ("Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp", "SoftSign", "SuperSpike", "Erf")


def _built_in(obj) -> bool:
    return (type(obj).__module__ == "spikingjelly.activation_based.surrogate"
            and type(obj).__name__ in BUILT_IN_SURROGATES)


def _surrogate_class():
    """``SpikingJellySurrogate``, created on first use: it subclasses SpikingJelly's ``SurrogateFunctionBase``, so
    SpikingJelly is imported only when a surrogate is wrapped; module-level by name (pickle finds it here)."""
    cls = globals().get("SpikingJellySurrogate")
    if cls is not None:
        return cls
    base = _import_surrogate_module().SurrogateFunctionBase

    class SpikingJellySurrogate(base):
        """A :class:`snnbridge.Surrogate` as SpikingJelly's ``surrogate_function`` (``neuron.surrogate_function = s``).

        Spiking mode (default): the exact spikes ``x >= 0`` with the surrogate's derivative in the backward;
        ``set_spiking_mode(False)``: the surrogate's smooth primitive, when it has one. Not one of SpikingJelly's
        seven built-in surrogates, so its neurons run SpikingJelly's Torch reference loop (see docs/training.md).
        """

        def __init__(self, surrogate):
            super().__init__(spiking=True)
            #: the framework-neutral surrogate this module applies
            self.surrogate = surrogate

        def forward(self, x):
            return self.surrogate(x) if self.spiking else self.surrogate.primitive(x)

        def extra_repr(self) -> str:
            return f"{self.surrogate!r}, spiking={self.spiking}"

    SpikingJellySurrogate.__module__ = __name__
    SpikingJellySurrogate.__qualname__ = "SpikingJellySurrogate"
    globals()["SpikingJellySurrogate"] = SpikingJellySurrogate
    return SpikingJellySurrogate


def __getattr__(name):  # PEP 562: ``SpikingJellySurrogate`` exists once asked for (pickle, isinstance checks)
    if name == "SpikingJellySurrogate":
        return _surrogate_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fires(fn) -> str | None:
    """``">="`` or ``">"``: the rule a spike function follows on x = -1, 0, 1; None when it is no spike function."""
    device = next((p.device for p in fn.parameters()), torch.device("cpu"))  # a module with a learnable width
    return firing_rule(fn, device)


@hookimpl
def snnbridge_wrap_surrogate(surrogate):
    """A ``surrogate_function`` module: a :class:`snnbridge.Surrogate` wrapped in ``SpikingJellySurrogate``; that
    module or a SpikingJelly surrogate (``surrogate.ATan()`` ...: they fire on ``x >= 0``) as it is."""
    cls = _surrogate_class()
    if isinstance(surrogate, Surrogate):
        return cls(surrogate)
    if isinstance(surrogate, cls):
        return surrogate
    what = f"{type(surrogate).__module__}.{type(surrogate).__qualname__}"
    if isinstance(getattr(surrogate, "surrogate", None), Surrogate):
        raise BackendError(f"{what} is another framework's wrapper of {surrogate.surrogate!r}; on the spikingjelly "
                           "backend pass the snnbridge.Surrogate itself (snnbridge.surrogate(recipe)) or "
                           "snnbridge.surrogate(recipe, framework='spikingjelly').")
    if str(getattr(surrogate, "__module__", "")).split(".")[0] == "snntorch":
        raise BackendError(f"{getattr(surrogate, '__qualname__', what)} is an snnTorch spike_grad, which works on the "
                           "snntorch backend only; on the spikingjelly backend use a SpikingJelly surrogate "
                           "(spikingjelly.activation_based.surrogate.ATan()) or a snnbridge.Surrogate "
                           "(snnbridge.surrogate({'sg': {'shape': 'atan'}})).")
    if not isinstance(surrogate, nn.Module):
        raise BackendError(f"SpikingJelly neurons take a surrogate module (spikingjelly.activation_based.surrogate.*, "
                           f"e.g. surrogate.ATan()) or a snnbridge.Surrogate, got {what}.")
    rule = _fires(surrogate)
    if rule != ">=":
        why = ("fires on x > 0, not x >= 0" if rule == ">" else
               "does not return 0/1 spikes on x = -1, 0, 1 (a SpikingJelly surrogate in non-spiking mode? call "
               "set_spiking_mode(True))")
        raise BackendError(f"the surrogate {what} {why}; snnbridge's neurons fire on v >= threshold on every "
                           "backend. Use a SpikingJelly surrogate in spiking mode or a snnbridge.Surrogate.")
    return surrogate


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="SpikingJelly IF neurons (IFNode / ActivationAwareIFNode, soft reset, multi-step); "
                              "SpikingJelly 2.x or 0.0.0.0.14", kind="backend", provides=("backend",),
                      reference="https://github.com/fangwei123456/spikingjelly")


@hookimpl
def snnbridge_add_options():
    return [Option("kernel", str, "auto",
                   "neuron kernel: 'auto' (SpikingJelly's choice), 'torch', 'cupy' (SpikingJelly 0.0.0.0.14 + CuPy + "
                   "CUDA), 'triton' or 'cuda' (SpikingJelly 2 on CUDA, selected via SJ_*_CUDA_IMPLEMENTATION)",
                   choices=KERNELS)]


@hookimpl
def snnbridge_make_neuron(spec, options):
    return SpikingJellyLayer(spec, kernel=options.get("kernel", "auto"))
