"""Recipes: an ordered list of plugins with options, from Python, YAML or TOML.

Python::

    ["maxnorm", {"robustnorm": {"percentile": 99.99}}]

YAML (``snnbridge convert --config recipe.yaml``)::

    recipe:
      - robustnorm: {percentile: 99.9, channelwise: true}
    backend: {name: spikingjelly}          # or just: backend: spikingjelly
    timesteps: 32

TOML::

    recipe = [{robustnorm = {percentile = 99.9}}]
    timesteps = 32
    [backend]
    name = "torch"

A recipe is validated completely before any work is done: unknown plugins (with
suggestions), unknown or ill-typed options, two providers of an exclusive capability,
unmet requirements, and order rules each raise their own :mod:`snnbridge.errors` class.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import (MissingRequirementError, PluginConflictError, RecipeParseError, UnknownPluginError,
                     did_you_mean)
from .options import resolve_options
from .plugin import EXCLUSIVE_CAPABILITIES, PluginInfo
from .plugin_manager import Registry, get_registry, plugin_object_name


@dataclass(frozen=True)
class Step:
    """One validated recipe entry: the plugin name, its info and its complete options."""

    name: str
    options: dict[str, Any]
    info: PluginInfo


@dataclass
class Recipe:
    """A validated, ordered list of method plugins bound to a registry."""

    steps: list[Step]
    registry: Registry = field(repr=False)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def provider(self, capability: str) -> Step | None:
        """The step providing ``capability`` (or its fallback provider), if any."""
        for s in self.steps:
            if capability in s.info.provides:
                return s
        for s in self.steps:
            if capability in s.info.fallback:
                return s
        return None

    def provides(self, capability: str) -> bool:
        return self.provider(capability) is not None

    def to_list(self) -> list[dict[str, dict[str, Any]]]:
        """A plain-data form of the recipe (for reports and saving)."""
        return [{s.name: {k: v for k, v in s.options.items()}} for s in self.steps]


def _entries(recipe: Any) -> list[tuple[Any, Mapping[str, Any] | None]]:
    """Normalise the accepted Python forms into (name-or-object, options) pairs."""
    if isinstance(recipe, Recipe):
        return [(s.name, s.options) for s in recipe.steps]
    if isinstance(recipe, (str, Mapping)) or not isinstance(recipe, Iterable):
        recipe = [recipe]
    out = []
    for i, entry in enumerate(recipe):
        if isinstance(entry, str):
            out.append((entry, None))
        elif isinstance(entry, Mapping):
            if len(entry) != 1:
                raise RecipeParseError(
                    f"recipe entry {i + 1} is a mapping with {len(entry)} keys ({', '.join(map(str, entry))}); each "
                    "entry must name exactly one plugin: write separate entries like [{'a': {...}}, {'b': {...}}].")
            (name, opts), = entry.items()
            if opts is not None and not isinstance(opts, Mapping):
                raise RecipeParseError(f"options of recipe entry {name!r} must be a mapping (e.g. {{percentile: 99.9}}), "
                                       f"got {type(opts).__name__} {opts!r}.")
            out.append((name, opts))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], (Mapping, type(None))):
            out.append((entry[0], entry[1]))
        elif entry is None:
            raise RecipeParseError(f"recipe entry {i + 1} is empty; remove it or name a plugin.")
        else:
            out.append((entry, None))  # a plugin object
    return out


def build_recipe(recipe: Any, *, registry: Registry | None = None, for_conversion: bool = True) -> Recipe:
    """Parse and validate ``recipe`` (see the module docstring); raises before any work is done."""
    entries = _entries(recipe)
    objects = [e for e, _ in entries if not isinstance(e, str)]
    if registry is None:
        registry = get_registry(objects)
    else:
        for obj in objects:
            registry.add_object(obj)
    if not entries:
        raise MissingRequirementError("the recipe is empty; name at least a threshold method, e.g. ['maxnorm'] or "
                                      "[{'robustnorm': {'percentile': 99.9}}] (see `snnbridge plugins`).")
    steps: list[Step] = []
    for entry, given in entries:
        name = entry if isinstance(entry, str) else plugin_object_name(entry)
        if not isinstance(name, str):
            raise RecipeParseError(f"recipe entries must be plugin names, {{name: options}} mappings or plugin objects; "
                                   f"got {entry!r}.")
        if not registry.has(name):
            _unknown(registry, name)
        info = registry.info(name)
        if info.kind == "backend":
            raise PluginConflictError(f"{name!r} is a neuron backend, not a method: pass backend={name!r} to "
                                      "snnbridge.convert (or `backend: {name: ...}` in a config file) instead of "
                                      "listing it in the recipe.")
        if any(s.name == name for s in steps):
            raise PluginConflictError(f"plugin {name!r} appears twice in the recipe; list it once with the options "
                                      "you want.")
        options = resolve_options(name, registry.options(name), given)
        steps.append(Step(name, options, info))
    _check_capabilities(steps, registry, for_conversion)
    validated = Recipe(steps, registry)
    for s in steps:  # option-dependent rules of each plugin (hook snnbridge_check_recipe)
        registry.call(s.name, "snnbridge_check_recipe", default=None, recipe=validated, options=s.options)
    return validated


def _unknown(registry: Registry, name: str) -> None:
    methods = [n for n in registry.names() if registry.info(n).kind != "backend"]
    raise UnknownPluginError(
            f"unknown snnbridge plugin {name!r}.{did_you_mean(name, methods)} Installed method plugins: "
            f"{', '.join(methods) or 'none'}. A third-party plugin must be pip-installed and register an entry point "
            "in the group 'snnbridge' (list them with `snnbridge plugins`).")


def _check_capabilities(steps: list[Step], registry: Registry, for_conversion: bool) -> None:
    seen: dict[str, str] = {}
    for i, s in enumerate(steps):
        for cap in s.info.provides:
            if cap in EXCLUSIVE_CAPABILITIES and cap in seen:
                raise PluginConflictError(
                    f"plugins {seen[cap]!r} and {s.name!r} both provide {cap!r}, and a recipe can have only one "
                    f"{_CAP_WORDS.get(cap, cap)}. Keep one of them.")
            seen.setdefault(cap, s.name)
    for i, s in enumerate(steps):
        others = steps[:i] + steps[i + 1:]
        for bad in s.info.conflicts:
            for o in others:
                if bad == o.name or bad in o.info.provides:
                    raise PluginConflictError(
                        f"plugin {s.name!r} cannot be combined with {o.name!r}"
                        + (f" (which provides {bad!r}: {_CAP_WORDS.get(bad, bad)})" if bad != o.name else "")
                        + f". Remove one of them from the recipe.")
        earlier = steps[:i]
        for need in s.info.requires:
            if not any(need in o.info.provides or need in o.info.fallback for o in earlier):
                later = [o.name for o in steps[i + 1:] if need in o.info.provides]
                if later:
                    raise PluginConflictError(f"plugin {s.name!r} needs {need!r} from an earlier plugin, but "
                                              f"{later[0]!r} comes after it; move {later[0]!r} before {s.name!r}.")
                raise MissingRequirementError(
                    f"plugin {s.name!r} needs {need!r} ({_CAP_WORDS.get(need, need)}), which no earlier plugin in the "
                    f"recipe provides. Add one of: {', '.join(_providers(registry, need)) or '(none installed)'} "
                    f"before {s.name!r}.")
        for cap in s.info.after:
            later = [o.name for o in steps[i + 1:] if cap in o.info.provides]
            if later:
                raise PluginConflictError(f"plugin {s.name!r} must come after {later[0]!r} (the {_CAP_WORDS.get(cap, cap)}"
                                          f" it builds on); reorder the recipe to put {later[0]!r} first.")
    if for_conversion and not any("threshold" in s.info.provides or "threshold" in s.info.fallback for s in steps):
        raise MissingRequirementError(
            "the recipe has no threshold source, so the neurons would have no threshold. Add one of: "
            f"{', '.join(_providers(registry, 'threshold')) or '(none installed)'} (e.g. recipe=['maxnorm', ...]).")


def _providers(registry: Registry, cap: str) -> list[str]:
    return [n for n in registry.names() if cap in registry.info(n).provides]


_CAP_WORDS = {
    "threshold": "threshold estimator",
    "activation": "activation replacement",
    "v0_base": "base initial membrane potential writer",
    "step_shift": "constant per-step input shift",
    "quantized_ann": "a quantized (QCFS-trained) source ANN",
}


# -- config files --------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """A conversion set-up read from a config file."""

    recipe: list
    backend: str = "torch"
    backend_options: dict[str, Any] = field(default_factory=dict)
    timesteps: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


_CONFIG_KEYS = {"recipe", "backend", "timesteps"}


def parse_config(data: Any, source: str = "<config>") -> RunConfig:
    """Build a :class:`RunConfig` from parsed YAML/TOML data (structure errors name the fix)."""
    if isinstance(data, list):
        data = {"recipe": data}
    if not isinstance(data, Mapping):
        raise RecipeParseError(f"{source}: the top level must be a mapping with a 'recipe' list, got "
                               f"{type(data).__name__}.")
    if "recipe" not in data:
        raise RecipeParseError(f"{source}: no 'recipe' key; write e.g.\nrecipe:\n  - maxnorm\n")
    recipe = data["recipe"]
    if isinstance(recipe, (str, Mapping)):
        recipe = [recipe]
    if not isinstance(recipe, list):
        raise RecipeParseError(f"{source}: 'recipe' must be a list of plugin names or {{name: options}} entries.")
    backend = data.get("backend", "torch")
    options: dict[str, Any] = {}
    if isinstance(backend, Mapping):
        backend = dict(backend)
        if "name" not in backend:
            raise RecipeParseError(f"{source}: 'backend' mapping needs a 'name' (torch, spikingjelly or snntorch).")
        name = backend.pop("name")
        options = backend
        backend = name
    if not isinstance(backend, str):
        raise RecipeParseError(f"{source}: 'backend' must be a name or a mapping with 'name', got {backend!r}.")
    timesteps = data.get("timesteps", 32)
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise RecipeParseError(f"{source}: 'timesteps' must be a positive whole number, got {timesteps!r}.")
    extra = {k: v for k, v in data.items() if k not in _CONFIG_KEYS}
    return RunConfig(recipe=recipe, backend=backend, backend_options=options, timesteps=timesteps, extra=extra)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeParseError(f"config file {str(path)!r} does not exist; give the path of a .yaml or .toml recipe.")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise RecipeParseError(f"config file {str(path)!r} must end in .yaml, .yml or .toml.")
    except tomllib.TOMLDecodeError as exc:
        raise RecipeParseError(f"{path}: not valid TOML: {exc}. Check quoting and brackets on that line.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RecipeParseError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}. Check the "
                               "indentation and the ':' after each key.") from exc
    return parse_config(data, str(path))
