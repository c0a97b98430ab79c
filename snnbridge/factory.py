"""Neuron factories: build a site's neurons with one backend adapter, ``factory(spec) -> NeuronLayer``.

:func:`make_neuron_factory` validates the backend name (with suggestions) and its options
before any work; the conversion, :func:`snnbridge.simulate` and the command line all use it.
"""

from __future__ import annotations

from typing import Any

from .errors import BackendError
from .neurons import NeuronLayer
from .options import resolve_options
from .plugin_manager import Registry, get_registry
from .spec import NeuronSpec


class NeuronFactory:
    """Builds a site's neurons with one backend adapter: ``factory(spec) -> NeuronLayer``.

    Picklable (a saved SNN keeps it to rebuild neurons after ``set_spec``): only the backend
    name and its options are stored; the plugin registry is looked up again after loading.
    """

    def __init__(self, backend: str, options: dict, registry: Registry | None = None):
        self.backend = backend
        self.options = dict(options)
        self._registry = registry

    def __getstate__(self):
        return {"backend": self.backend, "options": self.options, "_registry": None}

    def __call__(self, spec: NeuronSpec) -> NeuronLayer:
        """The backend's neurons realizing ``spec``."""
        registry = self._registry or get_registry()
        layer = registry.call(self.backend, "snnbridge_make_neuron", spec=spec, options=self.options)
        if not isinstance(layer, NeuronLayer):
            raise BackendError(f"backend {self.backend!r} returned {type(layer).__name__} from "
                               "snnbridge_make_neuron; adapters must return a snnbridge.NeuronLayer.")
        return layer

    def wrap_surrogate(self, surrogate: Any) -> Any:
        """The object this backend's neurons take as their surrogate gradient (hook ``snnbridge_wrap_surrogate``).

        ``surrogate``: a :class:`~snnbridge.surrogates.Surrogate`, a framework object the adapter accepts,
        or None (the backend's default, returned as None). Raises
        :class:`~snnbridge.errors.BackendError` when the backend has no surrogate support or the object
        belongs to another framework.
        """
        if surrogate is None:
            return None
        if self._registry is None:
            self._registry = get_registry()
        if not self._registry.implements(self.backend, "snnbridge_wrap_surrogate"):
            raise BackendError(f"backend {self.backend!r} takes no surrogate gradient (its adapter does not implement "
                               "snnbridge_wrap_surrogate); use backend='torch', 'spikingjelly' or 'snntorch'.")
        return self._registry.call(self.backend, "snnbridge_wrap_surrogate", surrogate=surrogate)


def make_neuron_factory(backend: str, backend_options: dict | None = None,
                        registry: Registry | None = None) -> NeuronFactory:
    """Validate ``backend`` and its options; return the :class:`NeuronFactory` of that adapter.

    Raises :class:`~snnbridge.errors.UnknownPluginError` for an unknown name (with
    suggestions), :class:`~snnbridge.errors.BackendError` for a method plugin given as a
    backend, and :class:`~snnbridge.errors.OptionError` for bad options.
    """
    registry = registry or get_registry()
    if not isinstance(backend, str):
        raise BackendError(f"backend must be a name such as 'torch', 'spikingjelly' or 'snntorch', got "
                           f"{type(backend).__name__}.")
    backend = registry.canonical(backend)
    registry.require(backend, kind="backend")
    if registry.info(backend).kind != "backend":
        raise BackendError(f"{backend!r} is a method plugin, not a neuron backend; choose one of "
                           f"{', '.join(registry.names('backend'))}.")
    options = resolve_options(backend, registry.options(backend), backend_options)
    return NeuronFactory(backend, options, registry)
