"""Discovery and calling of plugins.

Built-in methods and adapters are *not* special: they are registered through the
entry-point group ``snnbridge`` of snnbridge's own distribution, exactly like a third-party
``snnbridge-<method>`` package. Plugin objects can also be passed directly in a recipe.

Stage hooks are called one plugin at a time in *recipe order* (not pluggy's LIFO
registration order) with :meth:`Registry.call`; pluggy still validates every
implementation at registration, and ``check_pending`` catches misspelled hook names.

Environment: ``SNNBRIDGE_DISABLE_PLUGINS=a,b`` blocks installed plugins by name.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import types
from functools import lru_cache
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginLoadError, UnknownPluginError, did_you_mean
from .options import Option
from .plugin import PluginInfo

ENTRY_POINT_GROUP = "snnbridge"
_MISSING = object()


@lru_cache(maxsize=1)
def _entry_point_plugins() -> tuple[tuple[str, Any, str, str], ...]:
    """Import every plugin of the entry-point group once: (name, object, distribution, version)."""
    blocked = {n.strip() for n in os.environ.get("SNNBRIDGE_DISABLE_PLUGINS", "").split(",") if n.strip()}
    found: dict[str, tuple[str, Any, str, str]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in found and found[ep.name][2] != dist:
            raise PluginLoadError(
                f"two installed distributions register the snnbridge plugin {ep.name!r}: {found[ep.name][2]} and "
                f"{dist}. Uninstall one, or block one with SNNBRIDGE_DISABLE_PLUGINS={ep.name}.")
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"the snnbridge plugin {ep.name!r} (entry point {ep.value!r} of {dist} {version}) failed to import: "
                f"{type(exc).__name__}: {exc}. Reinstall or fix that package, or block it with "
                f"SNNBRIDGE_DISABLE_PLUGINS={ep.name}.") from exc
        found[ep.name] = (ep.name, obj, dist, version)
    return tuple(found.values())


def plugin_object_name(obj: Any) -> str:
    """The name a plugin object passed in Python is known by in a recipe."""
    name = getattr(obj, "name", None) or getattr(obj, "NAME", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(obj, types.ModuleType):
        return obj.__name__.rpartition(".")[2]
    return type(obj).__name__.lower()


class Registry:
    """A pluggy plugin manager holding the installed plugins plus any objects passed in Python."""

    def __init__(self, objects: Iterable[Any] = (), load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._dist: dict[str, tuple[str, str]] = {}
        if load_entry_points:
            for name, obj, dist, version in _entry_point_plugins():
                self._register(obj, name)
                self._dist[name] = (dist, version)
        for obj in objects:
            self.add_object(obj)

    # -- registration ---------------------------------------------------------------------------
    def _register(self, obj: Any, name: str) -> None:
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginLoadError(f"plugin {name!r} is invalid: {exc}. Check the hook names and arguments against "
                                  "snnbridge.hookspecs (the plugin author's manual).") from exc
        except ValueError as exc:  # pluggy: name already registered
            raise PluginLoadError(f"a plugin named {name!r} is already registered ({exc}); give the object another "
                                  "'name' attribute.") from exc
        if not self.implements(name, "snnbridge_plugin_info"):
            self.pm.unregister(name=name)
            raise PluginLoadError(f"plugin {name!r} does not implement snnbridge_plugin_info; every plugin must "
                                  "describe itself (see snnbridge.hookspecs).")

    def add_object(self, obj: Any) -> str:
        """Register a plugin object (module, class instance) for this registry; return its name."""
        name = plugin_object_name(obj)
        existing = self.pm.get_plugin(name)
        if existing is obj:
            return name
        if existing is not None:
            raise PluginLoadError(f"a plugin named {name!r} is already installed; give your object a different "
                                  "'name' attribute to use it beside the installed one.")
        self._register(obj, name)
        self._dist[name] = ("(python object)", "")
        return name

    # -- queries ----------------------------------------------------------------------------------
    def names(self, kind: str | None = None) -> list[str]:
        out = [n for n, p in self.pm.list_name_plugin() if p is not None]
        if kind is not None:
            out = [n for n in out if self.info(n).kind == kind]
        return sorted(out)

    def has(self, name: str) -> bool:
        return self.pm.get_plugin(name) is not None

    def require(self, name: str, kind: str | None = None) -> None:
        """Raise :class:`UnknownPluginError` (with suggestions) unless ``name`` is installed."""
        if self.has(name):
            return
        pool = self.names(kind)
        what = {"backend": "backend", None: "plugin"}.get(kind, f"{kind} plugin")
        raise UnknownPluginError(
            f"unknown snnbridge {what} {name!r}.{did_you_mean(name, pool)} Installed: {', '.join(pool) or 'none'}. "
            f"A third-party plugin must be pip-installed and register an entry point in the group "
            f"{ENTRY_POINT_GROUP!r} (see `snnbridge plugins`).")

    def info(self, name: str) -> PluginInfo:
        info = self.call(name, "snnbridge_plugin_info")
        if not isinstance(info, PluginInfo):
            raise PluginLoadError(f"plugin {name!r}: snnbridge_plugin_info must return snnbridge.PluginInfo, got "
                                  f"{type(info).__name__}.")
        return info

    def options(self, name: str) -> list[Option]:
        opts = self.call(name, "snnbridge_add_options", default=[]) or []
        for o in opts:
            if not isinstance(o, Option):
                raise PluginLoadError(f"plugin {name!r}: snnbridge_add_options must return a list of snnbridge.Option.")
        return list(opts)

    def distribution(self, name: str) -> tuple[str, str]:
        return self._dist.get(name, ("?", "?"))

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(c.name for c in (self.pm.get_hookcallers(plugin) or []))

    def implements(self, name: str, hook: str) -> bool:
        return self._impl(name, hook) is not None

    # -- calling ----------------------------------------------------------------------------------
    def _impl(self, name: str, hook: str):
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == name:
                return impl
        return None

    def call(self, name: str, hook: str, default: Any = _MISSING, **kwargs) -> Any:
        """Call one plugin's implementation of ``hook`` with the arguments it accepts.

        Returns ``default`` when the plugin does not implement the hook (raises if no default).
        """
        impl = self._impl(name, hook)
        if impl is None:
            if default is _MISSING:
                raise PluginLoadError(f"plugin {name!r} does not implement {hook}.")
            return default
        return impl.function(*[kwargs[a] for a in impl.argnames])

    def claim_module(self, module) -> Any:
        """Ask every plugin whether ``module`` is an activation it owns (first claim wins)."""
        return self.pm.hook.snnbridge_claim_module(module=module)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of installed plugins (entry points only), built once per process."""
    return Registry()


def get_registry(objects: Iterable[Any] = ()) -> Registry:
    """The installed plugins, plus ``objects`` if given (then a fresh registry)."""
    objects = list(objects)
    return Registry(objects) if objects else default_registry()
