"""Surrogate gradients: one framework-neutral object, realized on every backend.

The spike ``s = H(x)`` of a neuron, with ``x = v - threshold``, has no useful derivative. A
surrogate keeps the forward exact and replaces the derivative in the backward pass::

    forward:  s = 1 if x >= 0 else 0      (snnbridge's one firing rule: ties fire; x's dtype)
    backward: dL/dx = dL/ds * derivative(x)

:class:`Surrogate` is that object. Calling it on ``x`` runs one autograd function of the core
whose backward multiplies by :meth:`Surrogate.derivative` - the one method a surrogate plugin
implements (hook ``snnbridge_surrogate``). A randomized derivative (``randomized = True``, e.g.
LocalZO) is called once per backward call of each spike tensor, so its samples are fresh per
element and per call; :meth:`Surrogate.generator` gives it a seeded generator when the user
asked for one.

:func:`surrogate` builds a recipe's one surrogate plugin and returns the object a framework's
neurons take (SpikingJelly: a ``surrogate_function`` module; snnTorch: a ``spike_grad``
callable; torch: the :class:`Surrogate` itself) - the wrapping is done by the adapter (hook
``snnbridge_wrap_surrogate``). :meth:`snnbridge.SpikingModel.set_surrogate` puts a surrogate on
a converted SNN's neurons.

A surrogate must pickle (a model holding one is deep-copied and may be saved with
``pickled=True``): subclass at module level and keep plain attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError, MissingRequirementError, PluginConflictError, PluginError, RecipeParseError

if TYPE_CHECKING:  # pragma: no cover
    from .plugin_manager import Registry


class _Spike(torch.autograd.Function):
    """Heaviside forward (``x >= 0``, in ``x``'s dtype); backward ``grad * surrogate.derivative(x)``."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        surrogate = ctx.surrogate
        d = surrogate.derivative(x)
        if not isinstance(d, torch.Tensor) or d.shape != x.shape:
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise PluginError(f"surrogate {surrogate!r}: derivative(x) must return a tensor shaped like x "
                              f"{tuple(x.shape)}, got {got}.")
        return grad * d.to(grad.dtype), None


def firing_rule(fn: Any, device: torch.device | str = "cpu") -> str | None:
    """``">="`` or ``">"``: the rule the spike function ``fn`` follows on ``x = -1, 0, 1``; None when it is none.

    Adapters use it to tell a framework's native surrogate (snnTorch's fire on ``>``) from one that
    keeps snnbridge's rule (ties fire), before putting it on their neurons.
    """
    probe = torch.tensor([-1.0, 0.0, 1.0], device=device)
    try:
        with torch.no_grad():
            out = fn(probe)
    except Exception:
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        return None
    return {(0.0, 1.0, 1.0): ">=", (0.0, 0.0, 1.0): ">"}.get(tuple(out.detach().float().tolist()))


class Surrogate:
    """A surrogate spike function on ``x = v - threshold``: exact spikes forward, ``derivative(x)`` backward.

    Subclass it (at module level, so it pickles) and implement :meth:`derivative`; optionally
    :meth:`primitive` (a smooth function whose derivative is :meth:`derivative`, used for checks
    and SpikingJelly's non-spiking mode). ``options`` are the plugin's validated options;
    ``seed`` (None: torch's global generator) seeds the generators :meth:`generator` hands a
    randomized derivative. ``source`` is ``{plugin: options}`` when :func:`surrogate` built the
    object: what :func:`snnbridge.save` records to rebuild it on load.
    """

    #: the derivative draws random numbers (fresh ones on every backward call)
    randomized: bool = False

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        self.options = dict(options or {})
        self.seed = seed
        self.source: dict[str, dict[str, Any]] | None = None
        self._generators: dict[str, torch.Generator] = {}

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate of ``dH/dx`` at ``x`` (same shape and dtype); called once per backward call."""
        raise NotImplementedError(f"{type(self).__name__} must implement derivative(x)")

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        """A smooth function whose derivative is :meth:`derivative` (optional; not every surrogate has one)."""
        raise NotImplementedError(f"{type(self).__name__} has no smooth primitive")

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """The generator for random draws on ``device``: None (torch's global one) unless a seed was given, else
        this surrogate's own, seeded with ``seed`` when first used on that device."""
        if self.seed is None:
            return None
        key = str(torch.device(device))
        g = self._generators.get(key)
        if g is None:
            g = self._generators[key] = torch.Generator(device=key).manual_seed(int(self.seed))
        return g

    def manual_seed(self, seed: int | None) -> Surrogate:
        """Restart the random draws from ``seed`` (None: use torch's global generator); returns self."""
        self.seed = None if seed is None else int(seed)
        self._generators = {}
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(x >= 0)`` in ``x``'s dtype; gradients through :meth:`derivative`."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            what = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"a surrogate takes a floating-point tensor x = v - threshold, got {what}; pass "
                             "x.float().")
        return _Spike.apply(x, self)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


def surrogate_of(obj: Any) -> Surrogate | None:
    """The core :class:`Surrogate` behind ``obj``: itself, or the one a framework wrapper holds (``.surrogate``)."""
    if isinstance(obj, Surrogate):
        return obj
    inner = getattr(obj, "surrogate", None)
    return inner if isinstance(inner, Surrogate) else None


def build_surrogate(recipe: Any, registry: Registry | None = None) -> Surrogate:
    """The core :class:`Surrogate` of ``recipe`` (its one surrogate plugin, validated; see :func:`surrogate`)."""
    from .options import resolve_options
    from .plugin_manager import plugin_object_name
    from .recipe import entries_and_registry

    if isinstance(recipe, Surrogate):
        return recipe
    entries, registry = entries_and_registry(recipe, registry)
    offered = [n for n in registry.names() if "surrogate" in registry.info(n).provides]
    example = "'localzo' or {'sg': {'shape': 'atan'}}"
    if not entries:
        raise MissingRequirementError(f"the surrogate recipe is empty; name one surrogate plugin, e.g. {example} "
                                      f"(installed: {', '.join(offered) or 'none'}).")
    chosen: list[tuple[str, dict]] = []
    for entry, given in entries:
        name = entry if isinstance(entry, str) else plugin_object_name(entry)
        if not isinstance(name, str):
            raise RecipeParseError(f"a surrogate recipe names a plugin ('localzo', {{'sg': {{'shape': 'atan'}}}}), "
                                   f"got {entry!r}.")
        name = registry.require(name)
        info = registry.info(name)
        if info.kind == "backend":
            raise PluginConflictError(f"{name!r} is a neuron backend, not a surrogate gradient: pass "
                                      f"framework={name!r} to snnbridge.surrogate. Surrogates: "
                                      f"{', '.join(offered) or 'none installed'}.")
        if info.kind != "training":
            raise PluginConflictError(f"{name!r} is a conversion method, not a surrogate gradient: it belongs in the "
                                      "recipe of snnbridge.convert. A surrogate recipe names one of: "
                                      f"{', '.join(offered) or 'none installed'}.")
        options = resolve_options(name, registry.options(name), given)
        if "surrogate" in info.provides:
            chosen.append((name, options))
        # other training plugins (losses) are skipped, so one training recipe serves the loss and the surrogate
    if not chosen:
        raise MissingRequirementError(f"the recipe names no surrogate gradient; add one, e.g. {example} "
                                      f"(installed: {', '.join(offered) or 'none'}).")
    if len(chosen) > 1:
        names = ", ".join(repr(n) for n, _ in chosen)
        raise PluginConflictError(f"the surrogate recipe names {len(chosen)} surrogates ({names}); neurons take one "
                                  "surrogate gradient. Keep one (set another one later with snn.set_surrogate).")
    name, options = chosen[0]
    made = registry.call(name, "snnbridge_surrogate", options=options)
    if not isinstance(made, Surrogate):
        raise PluginError(f"plugin {name!r}: snnbridge_surrogate must return a snnbridge.Surrogate, got "
                          f"{type(made).__name__}.")
    made.source = {name: dict(options)}
    return made


def surrogate(recipe: Any, framework: str = "torch", *, registry: Registry | None = None) -> Any:
    """Build the surrogate gradient of ``recipe`` for ``framework``'s neurons.

    :param recipe: one surrogate plugin with options - ``"localzo"``,
        ``{"localzo": {"delta": 0.05, "samples": 1}}``, ``[{"sg": {"shape": "triangle"}}]`` -
        or a :class:`Surrogate` to wrap.
    :param framework: ``"torch"`` (default: the framework-neutral :class:`Surrogate`, which every
        backend's ``snn.set_surrogate`` takes), ``"spikingjelly"`` (a
        ``spikingjelly.activation_based.surrogate.SurrogateFunctionBase`` for a neuron's
        ``surrogate_function``) or ``"snntorch"`` (a ``spike_grad`` callable for ``snntorch.Leaky``);
        any installed backend that implements ``snnbridge_wrap_surrogate``.
    :param registry: the plugin registry (default: the installed plugins plus plugin objects in ``recipe``).

    Every form fires on ``v >= threshold``. Loss plugins in the recipe are skipped (one training
    recipe serves :func:`snnbridge.training_loss` and this). Errors, each naming the fix: an
    unknown plugin or option, no surrogate or two, a conversion method or backend in the recipe,
    a framework that is not an installed backend.
    """
    from .factory import make_neuron_factory

    core = build_surrogate(recipe, registry)
    return make_neuron_factory(framework, None, registry).wrap_surrogate(core)
