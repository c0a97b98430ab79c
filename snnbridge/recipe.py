"""Recipes: an ordered list of plugins with options, from Python, YAML or TOML.

Python::

    ["maxnorm", {"robustnorm": {"percentile": 99.99}}]

YAML (``snnbridge convert --config recipe.yaml``)::

    recipe:
      - robustnorm: {percentile: 99.9, channelwise: true}
    backend: {name: spikingjelly}          # or just: backend: spikingjelly
    timesteps: 32
    model: examples.cifar10.model:make_model
    checkpoint: runs/cifar10/ann.pt
    data: {path: ../shared/data/cifar10-jpeg.tar.gz, image_size: 32}

TOML::

    recipe = [{robustnorm = {percentile = 99.9}}]
    timesteps = 32
    [backend]
    name = "torch"

A recipe is validated completely before any work is done: unknown plugins (with
suggestions), unknown or ill-typed options, two providers of an exclusive capability,
unmet requirements, and order rules each raise their own :mod:`snnbridge.errors` class. A
config file is validated as a whole (every key, with "did you mean" for misspelled ones).
YAML is read with ``yaml.safe_load``: Python tags are refused.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import MissingRequirementError, PluginConflictError, RecipeParseError, did_you_mean
from .options import resolve_options
from .plugin import CAPABILITIES, EXCLUSIVE_CAPABILITIES, YIELDS_TO, PluginInfo
from .plugin_manager import Registry, get_registry, plugin_object_name


@dataclass(frozen=True)
class RecipeEntry:
    """One validated recipe entry: the plugin's (canonical) name, its info and its complete options."""

    name: str
    options: dict[str, Any]
    info: PluginInfo


@dataclass
class Recipe:
    """A validated, ordered list of plugins bound to a registry."""

    entries: list[RecipeEntry]
    registry: Registry = field(repr=False)

    @property
    def names(self) -> list[str]:
        """Plugin names in recipe order (canonical names)."""
        return [e.name for e in self.entries]

    def entry(self, name: str) -> RecipeEntry | None:
        """The entry of plugin ``name`` (aliases accepted), or None when the recipe does not hold it."""
        return next((e for e in self.entries if e.name == self.registry.canonical(name)), None)

    def active_provider(self, capability: str) -> RecipeEntry | None:
        """The entry that supplies ``capability`` in this recipe, or None.

        A plugin that ``provides`` it wins; otherwise the first plugin offering it as a
        ``fallback``, unless the capability yields to another one the recipe has
        (:data:`snnbridge.plugin.YIELDS_TO`: a fallback ``step_shift`` is inactive when there
        is a ``v0_base``).
        """
        for e in self.entries:
            if capability in e.info.provides:
                return e
        if any(self.active_provider(other) is not None for other in YIELDS_TO.get(capability, ())):
            return None
        for e in self.entries:
            if capability in e.info.fallback:
                return e
        return None

    def provides(self, capability: str) -> bool:
        """Whether some entry of the recipe provides ``capability`` (see :data:`snnbridge.CAPABILITIES`)."""
        return self.active_provider(capability) is not None

    def is_active(self, plugin: str, capability: str) -> bool:
        """True when ``plugin`` is the one that supplies ``capability`` in this recipe."""
        p = self.active_provider(capability)
        return p is not None and p.name == self.registry.canonical(plugin)

    def needs_data(self) -> list[str]:
        """Names of the plugins that need calibration data with their options."""
        return [e.name for e in self.entries if e.info.data_needed(e.options)]

    def data_reason(self) -> str | None:
        """Why this recipe needs calibration data (the first plugin that does, and its reason), or None."""
        for e in self.entries:
            need = e.info.data_needed(e.options)
            if need:
                return f"plugin {e.name!r} needs calibration data" + (f" {need}" if isinstance(need, str) else "")
        return None

    def to_list(self) -> list[dict[str, dict[str, Any]]]:
        """A plain-data form of the recipe (for reports and saving)."""
        return [{e.name: dict(e.options)} for e in self.entries]


def _entries(recipe: Any) -> list[tuple[Any, Mapping[str, Any] | None]]:
    """Normalise the accepted Python forms into (name-or-object, options) pairs."""
    if isinstance(recipe, Recipe):
        return [(e.name, e.options) for e in recipe.entries]
    if isinstance(recipe, (str, Mapping)) or not isinstance(recipe, Iterable):
        recipe = [recipe]
    out: list[tuple[Any, Mapping[str, Any] | None]] = []
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
                raise RecipeParseError(f"options of recipe entry {name!r} must be a mapping (e.g. "
                                       f"{{percentile: 99.9}}), "
                                       f"got {type(opts).__name__} {opts!r}.")
            out.append((name, opts))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], (Mapping, type(None))):
            out.append((entry[0], entry[1]))
        elif entry is None:
            raise RecipeParseError(f"recipe entry {i + 1} is empty; remove it or name a plugin.")
        elif isinstance(entry, (int, float, bool, list, tuple, bytes)):
            raise RecipeParseError(f"recipe entry {i + 1} is {type(entry).__name__} {entry!r}; recipe entries are "
                                   "plugin "
                                   "names, {name: options} mappings or plugin objects, e.g. ['maxnorm', 'opi'].")
        else:
            out.append((entry, None))  # a plugin object
    return out


def entries_and_registry(recipe: Any, registry: Registry | None = None, disabled: Iterable[str] = ()
                         ) -> tuple[list[tuple[Any, Mapping[str, Any] | None]], Registry]:
    """The recipe's (name-or-object, options) pairs and the registry that knows its plugin objects.

    ``registry`` None: the installed plugins (less ``disabled``) plus the recipe's plugin objects;
    otherwise the objects are added to the given registry. Shared by conversion, loss and
    surrogate recipes.
    """
    entries = _entries(recipe)
    objects = [e for e, _ in entries if not isinstance(e, str)]
    if registry is None:
        return entries, get_registry(objects, disabled=disabled)
    for obj in objects:
        registry.add_object(obj)
    return entries, registry


def build_recipe(recipe: Any, *, registry: Registry | None = None, for_conversion: bool = True,
                 disable: Iterable[str] = ()) -> Recipe:
    """Parse and validate ``recipe`` (see the module docstring); raises before any work is done.

    ``disable``: plugin names to leave out of the registry for this recipe (a config file's
    ``disable`` list); ``for_conversion=False`` skips the "needs a threshold source" rule
    (recipes for :func:`snnbridge.prepare`).
    """
    entries, registry = entries_and_registry(recipe, registry, disabled=disable)
    if not entries:
        raise MissingRequirementError("the recipe is empty; name at least a threshold method, e.g. ['maxnorm'] or "
                                      "[{'robustnorm': {'percentile': 99.9}}] (see `snnbridge plugins`).")
    built: list[RecipeEntry] = []
    for entry, given in entries:
        name = entry if isinstance(entry, str) else plugin_object_name(entry)
        if not isinstance(name, str):
            raise RecipeParseError(f"recipe entries must be plugin names, {{name: options}} mappings or plugin "
                                   "objects; "
                                   f"got {entry!r}.")
        name = registry.require(name, kind="method")
        info = registry.info(name)
        if info.kind == "backend":
            raise PluginConflictError(f"{name!r} is a neuron backend, not a method: pass backend={name!r} to "
                                      "snnbridge.convert (or `backend: {name: ...}` in a config file) instead of "
                                      "listing it in the recipe.")
        if info.kind == "training":
            use = ("snn.set_surrogate(snnbridge.surrogate({n!r}))" if "surrogate" in info.provides
                   else "snnbridge.training_loss([{n!r}])").format(n=name)
            raise PluginConflictError(f"{name!r} is a training plugin, not a conversion step: convert without it, then "
                                      f"use it when you train the SNN: {use} (see docs/training.md).")
        if any(e.name == name for e in built):
            raise PluginConflictError(f"plugin {name!r} appears twice in the recipe; list it once with the options "
                                      "you want.")
        built.append(RecipeEntry(name, resolve_options(name, registry.options(name), given), info))
    _check_capabilities(built, registry, for_conversion)
    validated = Recipe(built, registry)
    for e in built:  # option-dependent rules of each plugin (hook snnbridge_check_recipe)
        registry.call(e.name, "snnbridge_check_recipe", default=None, recipe=validated, options=e.options)
    return validated


def _check_capabilities(entries: list[RecipeEntry], registry: Registry, for_conversion: bool) -> None:
    seen: dict[str, str] = {}
    for e in entries:
        for cap in e.info.provides:
            if cap in EXCLUSIVE_CAPABILITIES and cap in seen:
                raise PluginConflictError(
                    f"plugins {seen[cap]!r} and {e.name!r} both provide {cap!r}, and a recipe can have only one "
                    f"{_CAP_WORDS.get(cap, cap)}. Keep one of them.")
            seen.setdefault(cap, e.name)
    for i, e in enumerate(entries):
        others = entries[:i] + entries[i + 1:]
        for bad in e.info.conflicts:
            for o in others:
                if bad == o.name or bad in o.info.provides:
                    raise PluginConflictError(
                        f"plugin {e.name!r} cannot be combined with {o.name!r}"
                        + (f" (which provides {bad!r}: {_CAP_WORDS.get(bad, bad)})" if bad != o.name else "")
                        + ". Remove one of them from the recipe.")
        earlier = entries[:i]
        for need in e.info.requires:
            if not any(need in o.info.provides or need in o.info.fallback for o in earlier):
                later = [o.name for o in entries[i + 1:] if need in o.info.provides]
                if later:
                    raise PluginConflictError(f"plugin {e.name!r} needs {need!r} from an earlier plugin, but "
                                              f"{later[0]!r} comes after it; move {later[0]!r} before {e.name!r}.")
                raise MissingRequirementError(
                    f"plugin {e.name!r} needs {need!r} ({_CAP_WORDS.get(need, need)}), which no earlier plugin in the "
                    f"recipe provides. Add one of: {', '.join(_providers(registry, need)) or '(none installed)'} "
                    f"before {e.name!r}.")
        for cap in e.info.after:
            later = [o.name for o in entries[i + 1:] if cap in o.info.provides]
            if later:
                raise PluginConflictError(f"plugin {e.name!r} must come after {later[0]!r} (the "
                                          f"{_CAP_WORDS.get(cap, cap)}"
                                          f" it builds on); reorder the recipe to put {later[0]!r} first.")
    if for_conversion and not any("threshold" in e.info.provides or "threshold" in e.info.fallback for e in entries):
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
    "training_loss": "base training loss",
    "surrogate": "surrogate gradient",
}
assert set(_CAP_WORDS) <= set(CAPABILITIES)


# -- config files --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Images for calibration and evaluation: a folder or archive, with preprocessing."""

    path: str
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass
class RunConfig:
    """A whole conversion set-up read from a config file (every key validated).

    ``model`` is ``module:factory``; ``checkpoint`` the ANN's weights; ``data`` the images;
    ``disable`` plugin names left out for this run; ``description`` free text.
    """

    recipe: list
    backend: str = "torch"
    backend_options: dict[str, Any] = field(default_factory=dict)
    timesteps: int = 32
    model: str | None = None
    checkpoint: str | None = None
    data: DataConfig | None = None
    disable: list[str] = field(default_factory=list)
    seed: int = 0
    description: str | None = None


CONFIG_KEYS = ("recipe", "backend", "timesteps", "model", "checkpoint", "data", "disable", "seed", "description")
_DATA_KEYS = ("path", "image_size", "mean", "std")


def _unknown_key(source: str, key: Any, allowed: Iterable[str], where: str = "the top level") -> RecipeParseError:
    allowed = list(allowed)
    return RecipeParseError(f"{source}: unknown key {key!r} at {where}.{did_you_mean(str(key), allowed)} Allowed keys: "
                            f"{', '.join(allowed)}.")


def _optional_str(data: Mapping, key: str, source: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecipeParseError(f"{source}: {key!r} must be a string, got {type(value).__name__} {value!r}.")
    return value


def _numbers(value: Any, key: str, source: str) -> tuple[float, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise RecipeParseError(f"{source}: data.{key} must be a number or a list of numbers (one per channel), got "
                               f"{value!r}.")
    return tuple(float(v) for v in values)


def _data_config(value: Any, source: str) -> DataConfig | None:
    if value is None:
        return None
    if isinstance(value, str):
        return DataConfig(path=value)
    if not isinstance(value, Mapping):
        raise RecipeParseError(f"{source}: 'data' must be a path or a mapping with {', '.join(_DATA_KEYS)}, got "
                               f"{type(value).__name__}.")
    for key in value:
        if key not in _DATA_KEYS:
            raise _unknown_key(source, key, _DATA_KEYS, "'data'")
    path = _optional_str(value, "path", source)
    if not path:
        raise RecipeParseError(f"{source}: 'data' needs a 'path' (an image folder or a .tar.gz of one).")
    size = value.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise RecipeParseError(f"{source}: data.image_size must be a positive whole number of pixels, got {size!r}.")
    mean = _numbers(value["mean"], "mean", source) if value.get("mean") is not None else None
    std = _numbers(value["std"], "std", source) if value.get("std") is not None else None
    return DataConfig(path=path, image_size=size, mean=mean, std=std)


def parse_config(data: Any, source: str = "<config>") -> RunConfig:
    """Build a :class:`RunConfig` from parsed YAML/TOML data (every structure error names the fix)."""
    if isinstance(data, list):
        data = {"recipe": data}
    if not isinstance(data, Mapping):
        raise RecipeParseError(f"{source}: the top level must be a mapping with a 'recipe' list, got "
                               f"{type(data).__name__}.")
    for key in data:
        if key not in CONFIG_KEYS:
            raise _unknown_key(source, key, CONFIG_KEYS)
    if "recipe" not in data:
        raise RecipeParseError(f"{source}: no 'recipe' key; write e.g.\nrecipe:\n  - maxnorm\n")
    recipe = data["recipe"]
    if isinstance(recipe, (str, Mapping)):
        recipe = [recipe]
    if not isinstance(recipe, list):
        raise RecipeParseError(f"{source}: 'recipe' must be a list of plugin names or {{name: options}} entries, got "
                               f"{type(recipe).__name__} {recipe!r}.")
    _entries(recipe)  # structure of every entry
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
    disable = data.get("disable", [])
    if isinstance(disable, str):
        disable = [disable]
    if not isinstance(disable, list) or not all(isinstance(n, str) for n in disable):
        raise RecipeParseError(f"{source}: 'disable' must be a list of plugin names, got {disable!r}.")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeParseError(f"{source}: 'seed' must be a whole number, got {seed!r}.")
    return RunConfig(recipe=recipe, backend=backend, backend_options=options, timesteps=timesteps,
                     model=_optional_str(data, "model", source), checkpoint=_optional_str(data, "checkpoint", source),
                     data=_data_config(data.get("data"), source), disable=list(disable), seed=seed,
                     description=_optional_str(data, "description", source))


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (``.yaml``/``.yml``, safe loading) or TOML (``.toml``) config file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeParseError(f"config file {str(path)!r} does not exist; give the path of a .yaml or .toml recipe.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeParseError(f"cannot read config file {str(path)!r}: {exc}. Give a UTF-8 .yaml or .toml file.") \
            from exc
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
        problem = getattr(exc, "problem", None) or exc
        hint = (" Python tags (!!python/...) are refused: snnbridge reads YAML with safe loading."
                if "python" in str(exc).lower() else " Check the indentation and the ':' after each key.")
        raise RecipeParseError(f"{path}: not valid YAML{where}: {problem}.{hint}") from exc
    return parse_config(data, str(path))
