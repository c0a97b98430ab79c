"""Discovery and calling of plugins, with broken plugins contained.

Built-in methods and adapters are *not* special: they are registered through the
entry-point group ``snnbridge`` of snnbridge's own distribution, exactly like a third-party
``snnbridge-<method>`` package. Plugin objects can also be passed directly in a recipe.

Stage hooks are called one plugin at a time, in *recipe order* (not pluggy's LIFO
registration order), through pluggy (a subset hook caller per call), so pluggy validates
every implementation at registration and its call monitoring sees every call.

A plugin that fails to import, implements no ``snnbridge_plugin_info``, misspells a hook or
an argument, returns the wrong type from a discovery hook, declares an option twice or uses
an unknown capability is *broken*: it is reported by name (a :class:`PluginLoadWarning` at
load, a row marked broken in ``snnbridge plugins``), every other plugin keeps working, and
a recipe that names it gets a :class:`~snnbridge.errors.PluginLoadError` with the reason.

Environment variables (read when a registry is built):

* ``SNNBRIDGE_DISABLE_PLUGINS=a,b`` - do not load these plugins (any plugin, built-in too).
* ``SNNBRIDGE_LOAD_PLUGINS=a,b`` - load only these *third-party* plugins (entry points of
  distributions other than snnbridge); empty loads none. snnbridge's own plugins always load
  unless disabled (as pytest, datasette and llm treat their defaults).
* ``SNNBRIDGE_TRACE_PLUGINS=1`` - print every hook call, its plugin, arguments, result and
  time to standard error.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import sys
import time
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pluggy

from . import hookspecs
from .corrections import timestep_options
from .errors import PluginError, PluginLoadError, SnnbridgeError, UnknownPluginError, did_you_mean
from .options import Option
from .plugin import CAPABILITIES, PluginInfo

ENTRY_POINT_GROUP = "snnbridge"
OWN_DISTRIBUTION = "snnbridge"
ENV_DISABLE = "SNNBRIDGE_DISABLE_PLUGINS"
ENV_LOAD = "SNNBRIDGE_LOAD_PLUGINS"
ENV_TRACE = "SNNBRIDGE_TRACE_PLUGINS"
PYTHON_OBJECT = "(python object)"
_MISSING = object()


class PluginLoadWarning(UserWarning):
    """An installed plugin is broken and was left out (the others keep working)."""


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be used: its name, where it came from, and why."""

    name: str
    reason: str
    distribution: str = "?"
    version: str = ""


def _names_from_env(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


@dataclass(frozen=True)
class _EntryPoint:
    name: str
    value: str
    dist: str
    version: str
    obj: Any = None
    error: str | None = None


@lru_cache(maxsize=8)
def _load_entry_points(disabled: frozenset[str], allowed: frozenset[str] | None) -> tuple[_EntryPoint, ...]:
    """Import every plugin of the entry-point group once per setting (import errors are recorded, not raised)."""
    out = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else ""
        if ep.name in disabled:
            continue
        if allowed is not None and dist != OWN_DISTRIBUTION and ep.name not in allowed:
            continue
        try:
            obj, error = ep.load(), None
        except Exception as exc:  # any error of a third-party import must not take snnbridge down
            obj, error = None, f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
        out.append(_EntryPoint(ep.name, ep.value, dist, version, obj, error))
    return tuple(out)


def plugin_object_name(obj: Any) -> str:
    """The name a plugin object passed in Python is known by in a recipe."""
    name = getattr(obj, "name", None) or getattr(obj, "NAME", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(obj, types.ModuleType):
        return obj.__name__.rpartition(".")[2]
    return type(obj).__name__.lower()


def _json_value(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _sentence(text: str) -> str:
    """``text`` ending in exactly one full stop (or its question mark)."""
    text = text.rstrip(". ")
    return text if text.endswith("?") else text + "."


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Registry:
    """A pluggy plugin manager holding the installed plugins plus any objects passed in Python.

    ``disabled``: plugin names to leave out (added to ``SNNBRIDGE_DISABLE_PLUGINS``).
    """

    def __init__(self, objects: Iterable[Any] = (), load_entry_points: bool = True,
                 disabled: Iterable[str] = ()):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._dist: dict[str, tuple[str, str]] = {}
        self._info: dict[str, PluginInfo] = {}
        self._options: dict[str, list[Option]] = {}
        self._aliases: dict[str, str] = {}
        self.broken: dict[str, BrokenPlugin] = {}
        self.disabled: set[str] = set(disabled) | (_names_from_env(ENV_DISABLE) or set())
        allowed = _names_from_env(ENV_LOAD)
        if os.environ.get(ENV_TRACE, "").strip() not in ("", "0"):
            self.pm.add_hookcall_monitoring(self._trace_before, self._trace_after)
        self._started: list[float] = []
        if load_entry_points:
            eps = _load_entry_points(frozenset(self.disabled), None if allowed is None else frozenset(allowed))
            seen: dict[str, str] = {}
            clashes = {e.name for e in eps if seen.setdefault(e.name, e.dist) != e.dist}
            for ep in eps:
                if ep.name in clashes:
                    dists = sorted({e.dist for e in eps if e.name == ep.name})
                    self._mark_broken(ep.name, f"registered by several distributions ({', '.join(dists)}); uninstall "
                                      f"one, or disable the name with {ENV_DISABLE}={ep.name}", ep.dist, ep.version)
                elif ep.error is not None:
                    self._mark_broken(ep.name, ep.error, ep.dist, ep.version)
                else:
                    self._add(ep.obj, ep.name, ep.dist, ep.version)
        for obj in objects:
            self.add_object(obj)
        self._check_capabilities()

    # -- registration -------------------------------------------------------------------------------
    def _mark_broken(self, name: str, reason: str, dist: str = "?", version: str = "") -> None:
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self._info.pop(name, None)
        self._options.pop(name, None)
        for alias in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[alias]
        self.broken[name] = BrokenPlugin(name, reason, dist, version)
        if dist != PYTHON_OBJECT:  # an object passed in Python raises instead (see add_object)
            warnings.warn(f"snnbridge plugin {name!r} ({dist} {version}".rstrip() + f") is broken and was left out: "
                          f"{_sentence(reason)} The other plugins work; disable it with {ENV_DISABLE}={name}.",
                          PluginLoadWarning, stacklevel=4)

    def _add(self, obj: Any, name: str, dist: str, version: str) -> bool:
        """Register and validate one plugin; a broken one is recorded in ``broken`` (returns False)."""
        try:
            self.pm.register(obj, name=name)
        except ValueError as exc:  # pluggy: name or object already registered
            self._mark_broken(name, f"a plugin with this name is already registered ({exc})", dist, version)
            return False
        except pluggy.PluginValidationError as exc:  # _mark_broken unregisters the partly registered plugin
            self._mark_broken(name, f"invalid hook implementation: {exc}; check the hook names and arguments against "
                              "snnbridge.hookspecs", dist, version)
            return False
        unknown = [impl.function.__name__ for hook in self.pm.get_hookcallers(obj) or ()
                   for impl in hook.get_hookimpls() if impl.plugin_name == name and not hook.has_spec()]
        if unknown:
            self._mark_broken(name, f"unknown hook {unknown[0]!r}{did_you_mean(unknown[0], hookspecs.HOOKS)}", dist,
                              version)
            return False
        self._dist[name] = (dist, version)
        reason = self._validate(name)
        if reason is not None:
            self._mark_broken(name, reason, dist, version)
            return False
        return True

    def _validate(self, name: str) -> str | None:
        """Read and check the discovery hooks once; return why the plugin is broken, or None."""
        if self._impl(name, "snnbridge_plugin_info") is None:
            return "it does not implement snnbridge_plugin_info (every plugin must describe itself)"
        try:
            info = self._call(name, "snnbridge_plugin_info")
        except Exception as exc:
            return f"snnbridge_plugin_info raised {type(exc).__name__}: {exc}"
        if not isinstance(info, PluginInfo):
            return f"snnbridge_plugin_info must return snnbridge.PluginInfo, got {type(info).__name__}"
        try:
            declared = self._call(name, "snnbridge_add_options") if self._impl(name, "snnbridge_add_options") else []
        except Exception as exc:
            return f"snnbridge_add_options raised {type(exc).__name__}: {exc}"
        declared = list(declared or [])
        bad = [o for o in declared if not isinstance(o, Option)]
        if bad:
            return f"snnbridge_add_options must return a list of snnbridge.Option, got a {type(bad[0]).__name__}"
        shared = timestep_options() if info.t_specific else []
        names = [o.name for o in declared + shared]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            why = " (the core adds it to every t_specific plugin)" if set(twice) & {o.name for o in shared} else ""
            return f"the option {twice[0]!r} is declared twice{why}"
        for alias in info.aliases:
            owner = self._aliases.get(alias) or (alias if self.pm.get_plugin(alias) is not None else None)
            if owner is not None and owner != name:
                return f"its alias {alias!r} is already the name of plugin {owner!r}"
        self._info[name] = info
        self._options[name] = declared + shared
        for alias in info.aliases:
            self._aliases[alias] = name
        return None

    def _check_capabilities(self) -> None:
        known = set(CAPABILITIES)
        for info in self._info.values():
            known |= set(info.defines)
        for name, info in list(self._info.items()):
            unknown = sorted(info.capability_names() - known)
            if unknown:
                self._mark_broken(name, f"unknown capability {unknown[0]!r}{did_you_mean(unknown[0], known)} (known: "
                                  f"{', '.join(sorted(known))}; a new one must be declared in PluginInfo.defines)",
                                  *self._dist.get(name, ("?", "")))

    def add_object(self, obj: Any) -> str:
        """Register a plugin object (module, class instance) for this registry; return its name.

        A broken object raises :class:`~snnbridge.errors.PluginLoadError` (it was passed on purpose).
        """
        name = plugin_object_name(obj)
        existing = self.pm.get_plugin(name)
        if existing is obj:
            return name
        if existing is not None or name in self._aliases:
            raise PluginLoadError(f"a plugin named {name!r} is already installed; give your object a different "
                                  "'name' attribute to use it beside the installed one.")
        if not self._add(obj, name, PYTHON_OBJECT, ""):
            raise PluginLoadError(f"plugin object {name!r} cannot be used: {_sentence(self.broken.pop(name).reason)}")
        self._check_capabilities()
        if name in self.broken:
            raise PluginLoadError(f"plugin object {name!r} cannot be used: {_sentence(self.broken.pop(name).reason)}")
        return name

    # -- queries ------------------------------------------------------------------------------------
    def names(self, kind: str | None = None) -> list[str]:
        """Working plugins (of one kind), sorted."""
        return sorted(n for n, info in self._info.items() if kind is None or info.kind == kind)

    def canonical(self, name: str) -> str:
        """The plugin's name if ``name`` is one of its aliases, else ``name``."""
        return self._aliases.get(name, name)

    def has(self, name: str) -> bool:
        return self.canonical(name) in self._info

    def require(self, name: str, kind: str | None = None) -> str:
        """The canonical name of a working plugin, or the error that says why it cannot be used."""
        canonical = self.canonical(name)
        if canonical in self._info:
            return canonical
        if name in self.broken:
            b = self.broken[name]
            raise PluginLoadError(f"the snnbridge plugin {name!r} ({b.distribution} {b.version}".rstrip()
                                  + f") is installed but broken: {_sentence(b.reason)} Fix or reinstall that package, "
                                  "or choose another plugin.")
        if name in self.disabled:
            raise UnknownPluginError(f"the snnbridge plugin {name!r} is disabled ({ENV_DISABLE} or the config's "
                                     "'disable' list); remove it from there to use it.")
        pool = self.names(kind)
        what = {"backend": "backend", None: "plugin"}.get(kind, f"{kind} plugin")
        raise UnknownPluginError(
            f"unknown snnbridge {what} {name!r}.{did_you_mean(name, pool + list(self._aliases))} Installed: "
            f"{', '.join(pool) or 'none'}. A third-party plugin must be pip-installed and register an entry point in "
            f"the group {ENTRY_POINT_GROUP!r} (see `snnbridge plugins`).")

    def info(self, name: str) -> PluginInfo:
        return self._info[self.require(name)]

    def options(self, name: str) -> list[Option]:
        """The plugin's options: its own, plus the shared ``timesteps``/``on_mismatch`` of T-specific plugins."""
        return list(self._options[self.require(name)])

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def distribution(self, name: str) -> tuple[str, str]:
        return self._dist.get(self.canonical(name), ("?", "?"))

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(self.canonical(name))
        return sorted(c.name for c in (self.pm.get_hookcallers(plugin) or []))

    def implements(self, name: str, hook: str) -> bool:
        return self._impl(self.canonical(name), hook) is not None

    def records(self, names: Iterable[str] = ()) -> list[dict[str, Any]]:
        """A JSON-ready description of the plugins (all, or ``names``): what ``snnbridge plugins --json`` prints.

        Broken plugins are listed too, with ``"broken": <reason>``; working ones have ``"broken": None``.
        """
        names = list(names)
        for n in names:
            if n not in self.broken:
                self.require(n)
        out: list[dict[str, Any]] = []
        for name in [self.canonical(n) for n in names] or self.names() + sorted(self.broken):
            if name in self.broken:
                b = self.broken[name]
                out.append({"name": name, "kind": "broken", "distribution": b.distribution, "version": b.version,
                            "broken": b.reason, "stages": [], "hooks": [], "summary": "", "reference": "",
                            "aliases": [], "provides": [], "fallback": [], "requires": [], "conflicts": [],
                            "after": [], "needs_data": False, "t_specific": False, "options": []})
                continue
            info = self._info[name]
            dist, version = self.distribution(name)
            hooks = self.hooks_of(name)
            stages = [stage for hook, stage in hookspecs.HOOK_STAGES.items() if hook in hooks]
            options = [{"name": o.name, "type": o.type_name(), "default": _json_value(o.default), "help": o.help,
                        "choices": None if o.choices is None else [_json_value(c) for c in o.choices],
                        "range": o.check_help or None, "required": o.required, "nullable": o.nullable}
                       for o in self._options[name]]
            needs = info.needs_data if isinstance(info.needs_data, bool) else "depends on options"
            out.append({"name": name, "kind": info.kind, "distribution": dist, "version": version, "broken": None,
                        "stages": stages, "hooks": hooks, "summary": info.summary, "reference": info.reference,
                        "aliases": list(info.aliases), "provides": list(info.provides),
                        "fallback": list(info.fallback), "requires": list(info.requires),
                        "conflicts": list(info.conflicts), "after": list(info.after), "needs_data": needs,
                        "t_specific": info.t_specific, "options": options})
        order = {"method": 0, "backend": 1, "training": 2, "broken": 3}
        out.sort(key=lambda r: (order.get(r["kind"], 4), r["name"]))
        return out

    # -- calling ------------------------------------------------------------------------------------
    def _impl(self, name: str, hook: str):
        caller = getattr(self.pm.hook, hook, None)
        if caller is None:
            return None
        for impl in caller.get_hookimpls():
            if impl.plugin_name == name:
                return impl
        return None

    def _call(self, name: str, hook: str, **kwargs) -> Any:
        """Call one plugin's implementation through pluggy (so call monitoring sees it)."""
        caller = getattr(self.pm.hook, hook)
        others = [p for n, p in self.pm.list_name_plugin() if p is not None and n != name]
        results = self.pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
        if caller.spec is not None and caller.spec.opts.get("firstresult"):
            return results
        return results[0] if results else None

    def call(self, name: str, hook: str, default: Any = _MISSING, **kwargs) -> Any:
        """Call one plugin's implementation of ``hook`` with the hook's arguments.

        Returns ``default`` when the plugin does not implement the hook (raises if no default).
        A plugin error that is not a :class:`~snnbridge.errors.SnnbridgeError` is re-raised as
        :class:`~snnbridge.errors.PluginError` naming the plugin and the hook.
        """
        name = self.require(name)
        if self._impl(name, hook) is None:
            if default is _MISSING:
                raise PluginError(f"plugin {name!r} does not implement {hook}.")
            return default
        try:
            return self._call(name, hook, **kwargs)
        except SnnbridgeError:
            raise
        except Exception as exc:
            dist, version = self.distribution(name)
            raise PluginError(f"plugin {name!r} ({dist} {version}".rstrip() + f") failed in {hook}: "
                              f"{type(exc).__name__}: {exc}. This is a bug of that plugin (or of its input); remove it "
                              "from the recipe, or run with --debug / look at the chained traceback.") from exc

    def claim_module(self, module) -> Any:
        """Ask every plugin whether ``module`` is an activation it owns (first claim wins).

        A plugin whose claim hook raises is marked broken (once) and skipped; the others still
        claim their modules.
        """
        for impl in reversed(self.pm.hook.snnbridge_claim_module.get_hookimpls()):  # pluggy's call order
            name = impl.plugin_name
            try:
                claim = self._call(name, "snnbridge_claim_module", module=module)
            except Exception as exc:
                self._mark_broken(name, f"snnbridge_claim_module raised {type(exc).__name__}: {exc}",
                                  *self._dist.get(name, ("?", "")))
                continue
            if claim is not None:
                return claim
        return None

    # -- tracing (SNNBRIDGE_TRACE_PLUGINS) ------------------------------------------------------------
    def _trace_before(self, hook_name, impls, kwargs) -> None:
        who = ", ".join(i.plugin_name for i in impls) or "-"
        args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
        print(f"snnbridge trace: {hook_name} [{who}] ({args})", file=sys.stderr, flush=True)
        self._started.append(time.perf_counter())

    def _trace_after(self, outcome, hook_name, impls, kwargs) -> None:
        ms = 1000 * (time.perf_counter() - self._started.pop()) if self._started else 0.0
        exc = outcome.exception
        what = f"raised {type(exc).__name__}: {exc}" if exc is not None else f"returned {_short(outcome.get_result())}"
        print(f"snnbridge trace: {hook_name} {what} ({ms:.1f} ms)", file=sys.stderr, flush=True)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of installed plugins (entry points only), built once per process."""
    return Registry()


def get_registry(objects: Iterable[Any] = (), *, disabled: Iterable[str] = ()) -> Registry:
    """The installed plugins, plus ``objects`` and minus ``disabled`` if given (then a fresh registry)."""
    objects, disabled = list(objects), list(disabled)
    return Registry(objects, disabled=disabled) if objects or disabled else default_registry()


def refresh() -> None:
    """Forget the cached registry and entry points (after installing a plugin or changing the environment)."""
    default_registry.cache_clear()
    _load_entry_points.cache_clear()
