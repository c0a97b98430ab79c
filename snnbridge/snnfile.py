"""The safe SNN file format: a converted SNN as tensors and plain data, and back.

A file holds only what ``torch.load(weights_only=True)`` accepts: tensors, numbers,
strings, ``None``, lists, tuples and dicts. No module is pickled. What it holds:

* ``state_dict``: the SNN's parameters and buffers (folded weights, corrected biases, the
  backend neurons' thresholds), never the membrane state of the last run;
* ``sites``: per site, the :class:`~snnbridge.sites.SiteInfo` fields, the
  :class:`~snnbridge.spec.NeuronSpec` (threshold, ``v0``, per-step bias table) and the
  per-input corrections as ``{"class": "module:QualName", "state": {...}}``
  (:class:`~snnbridge.corrections.Savable`);
* the recipe, backend and its options, T, decoding window, T checks, ``time_chunk``,
  ``forward_on_means``, the input shape, the conversion report, versions, the
  architecture reference (``module:factory``) when known, and the caller's metadata;
* ``surrogate``: the surrogate gradient set with ``snn.set_surrogate``, as its recipe entry
  ``{"recipe": [{plugin: options}]}`` (set again on load; a surrogate not built from a recipe
  is not saved, with a warning), or None.

:func:`rebuild` turns this back into a :class:`~snnbridge.runtime.SpikingModel` from the
ANN's architecture (traced and folded as at conversion, its weights then replaced by the
saved ones): no calibration is re-run and the outputs are bit for bit those of the saved SNN.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .corrections import DecodeWindow, Savable, class_ref, savable_class
from .errors import SnnbridgeError, SnnFileError
from .factory import make_neuron_factory
from .graph import trace_for_conversion
from .plugin_manager import Registry
from .runtime import SpikingModel
from .sites import SiteInfo
from .spec import NeuronSpec
from .surrogates import build_surrogate, surrogate_of

FORMAT = "snnbridge-snn"
#: 1: a pickled module (snnbridge 0.1 before the safe format; still readable with trusted=True);
#: 2: tensors and plain data only
FORMAT_VERSION = 2
_SITE_FIELDS = ("name", "kind", "clip_max", "source", "shape", "pre_pool", "notes")
_SCALARS = (type(None), bool, int, float, str)


def plain(value: Any, where: str) -> Any:
    """``value`` as the plain data a weights-only file can hold (tensors compacted), or a
    :class:`~snnbridge.errors.SnnFileError` naming ``where`` the first other object sits."""
    if type(value) in _SCALARS:
        return value
    for base in (bool, int, float, str):  # subclasses (enums, torch's TorchVersion) would be pickled by name
        if isinstance(value, base):
            return base(value)
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.untyped_storage().nbytes() > t.numel() * t.element_size() or not t.is_contiguous():
            t = t.contiguous().clone()  # a view would save its whole storage
        return t
    if isinstance(value, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, (str, int))]
        if bad:
            raise SnnFileError(f"{where} has a key of type {type(bad[0]).__name__}; a saved SNN stores dicts with "
                               "string or integer keys only.")
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise SnnFileError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a safe SNN file "
                       "cannot hold (only tensors, numbers, strings, None, lists, tuples and dicts). Store plain data "
                       "there, or save with snnbridge.save(..., pickled=True) and load only with trusted=True.")


def _readable(value: Any) -> Any:
    """A JSON-like copy of a report (objects a plugin put there become their ``repr``)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist() if value.numel() <= 64 else repr(value)
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _readable(v) for k, v in value.items()}
    return repr(value)


def _attachment(obj: Any, where: str) -> dict:
    if not isinstance(obj, Savable):
        raise SnnFileError(f"{where} is a {type(obj).__qualname__}, which this SNN cannot be saved with: a safe SNN "
                           "file stores SiteCorrection and TimestepCheck objects (snnbridge.corrections) as plain "
                           "data. Make the plugin attach one of those (module-level classes), or save with "
                           "snnbridge.save(..., pickled=True).")
    ref = class_ref(type(obj))
    if "<locals>" in ref:
        raise SnnFileError(f"{where} is an instance of {ref}, a class defined inside a function, which loading could "
                           "not find again; define it at module level in the plugin.")
    return {"class": ref, "state": plain(obj.state_dict(), f"{where} ({ref}) state")}


def _restore(entry: Any, where: str) -> Any:
    if not (isinstance(entry, dict) and isinstance(entry.get("class"), str) and isinstance(entry.get("state"), dict)):
        raise SnnFileError(f"{where} is malformed ({type(entry).__name__}); the file is damaged or was not written "
                           "by snnbridge.save.")
    cls = savable_class(entry["class"])
    if cls is None:
        module = entry["class"].partition(":")[0]
        raise SnnFileError(f"{where} is a {entry['class']}, a class that is not loaded here: install the plugin that "
                           f"defines it, or import {module!r} before snnbridge.load.")
    return cls.from_state_dict(entry["state"])


def _spec_state(spec: NeuronSpec, where: str) -> dict:
    if type(spec) is not NeuronSpec:
        raise SnnFileError(f"{where} is a {type(spec).__qualname__}; a safe SNN file stores snnbridge.NeuronSpec "
                           "values only.")
    return {"threshold": plain(spec.threshold, where), "v0": plain(spec.v0, where),
            "step_bias": plain(spec.step_bias, where)}


def to_payload(snn: SpikingModel, *, architecture: str | None, metadata: Mapping[str, Any] | None,
               versions: dict[str, str], saved_at: str) -> dict:
    """The plain-data form of ``snn`` (see the module docstring)."""
    sites = {}
    for name, site in snn.sites.items():
        info = {f: plain(getattr(site.info, f), f"site {name!r} info.{f}") for f in _SITE_FIELDS}
        info["shape"] = list(info["shape"]) if info["shape"] is not None else None
        sites[name] = {"info": info, "spec": _spec_state(site.spec, f"site {name!r} spec"),
                       "corrections": [_attachment(c, f"site {name!r} correction {i}")
                                       for i, c in enumerate(site.corrections)]}
    factory = snn._factory
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, **plain(versions, "versions"), "saved_at": saved_at,
        "architecture": architecture, "model_class": snn.report.get("model_class"),
        "recipe": plain(snn.recipe, "the recipe"), "backend": snn.backend_name,
        "backend_options": plain(dict(getattr(factory, "options", {})), "the backend options"),
        "timesteps": snn.timesteps, "warmup": snn.warmup, "lookahead": snn.lookahead, "steps_run": snn.steps_run,
        "time_chunk": snn.time_chunk, "forward_on_means": bool(snn.forward_on_means),
        "input_shape": list(snn.input_shape) if snn.input_shape is not None else None,
        "decode_window": {"delay": snn.decode_window.delay, "keep": snn.decode_window.keep},
        "timestep_checks": [_attachment(c, f"timestep check {i}") for i, c in enumerate(snn.timestep_checks)],
        "sites": sites,
        "state_dict": {k: plain(v, f"state_dict[{k!r}]") for k, v in snn.state_dict().items()},
        "report": json.loads(json.dumps(_readable(snn.report))),
        "metadata": plain(dict(metadata or {}), "metadata"),
        "surrogate": _surrogate_record(snn),
    }


def _surrogate_record(snn: SpikingModel) -> dict | None:
    """The surrogate set on ``snn`` as its recipe entry ``{"recipe": [{plugin: options}]}``, or None.

    Only a surrogate built from a recipe (:func:`snnbridge.surrogate`) can be rebuilt on load; any other
    (a framework's own, a hand-made subclass) is left out with a warning: the loaded SNN has the
    backend's default and the caller sets it again.
    """
    given = snn.surrogate
    if given is None:
        return None
    core = surrogate_of(given)
    if core is not None and core.source is not None:
        return {"recipe": [plain(core.source, "the surrogate's recipe")]}
    warnings.warn(f"snnbridge.save: the SNN's surrogate gradient {given!r} is not saved (only surrogates built by "
                  "snnbridge.surrogate(recipe) are); the loaded SNN has the backend's default surrogate: set yours "
                  "again with snn.set_surrogate(...).", RuntimeWarning, stacklevel=4)
    return None


# -- rebuilding -------------------------------------------------------------------------------------


def _model_from(model: Any, architecture: str | None, model_class: str | None) -> nn.Module:
    from .loading import load_model

    if model is None:
        if not architecture:
            what = f" (a {model_class})" if model_class else ""
            raise SnnFileError(f"the file does not say how to build the ANN{what}; pass its architecture, as for "
                               "load_state_dict: snnbridge.load(path, model=make_model()) (or a factory, or "
                               "'module:factory').")
        model = architecture
    if isinstance(model, str):
        return load_model(model)
    if isinstance(model, nn.Module):
        return model
    if callable(model):
        built = model()
        if not isinstance(built, nn.Module):
            raise SnnFileError(f"model= factory returned {type(built).__name__}, not a torch.nn.Module.")
        return built
    raise SnnFileError(f"model= must be the ANN (an nn.Module), a function that builds it, or 'module:factory', got "
                       f"{type(model).__name__}.")


def _few(items: list, n: int = 4) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def _add_created_biases(snn: SpikingModel, state: dict) -> None:
    """Give Conv/Linear layers the bias a correction created at conversion (``Feed.add_bias``)."""
    own = snn.state_dict()
    for key in state:
        if key in own or not key.endswith(".bias"):
            continue
        try:
            layer = snn.get_submodule(key[: -len(".bias")])
        except AttributeError:
            continue
        if getattr(layer, "bias", 0) is None and isinstance(getattr(layer, "weight", None), torch.Tensor):
            layer.bias = nn.Parameter(torch.zeros_like(state[key]), requires_grad=False)


def _as_prepared(ann: nn.Module, recipe, sites: list[str]):
    """The graph of ``snnbridge.prepare(ann, recipe)`` when that gives the saved sites (the user passed the
    plain architecture of a model converted after QCFS-style training), else None."""
    from .prepare import prepare

    replacing = [e for e in recipe.entries if recipe.registry.implements(e.name, "snnbridge_replace_activation")]
    if not replacing:
        return None
    try:
        prepared = prepare(ann, [{e.name: e.options} for e in replacing])
    except SnnbridgeError:
        return None
    graph = trace_for_conversion(prepared, claim=recipe.registry.claim_module)
    return graph if list(graph.sites) == sites else None


def rebuild(payload: dict, model: Any, registry: Registry) -> SpikingModel:
    """A :class:`SpikingModel` from :func:`to_payload`'s data and the ANN's architecture (see the module docstring)."""
    from .recipe import build_recipe

    mismatch = ("the given model is not the architecture this SNN was converted from ({}). Pass the same "
                "architecture (same layers, width and classes; for a model from snnbridge.prepare, the prepared "
                "model)")
    try:
        recipe = build_recipe(payload["recipe"], registry=registry)
        factory = make_neuron_factory(payload["backend"], payload["backend_options"], recipe.registry)
    except SnnbridgeError as exc:
        raise SnnFileError(f"the file's recipe or backend cannot be set up here: {exc}") from exc
    ann = _model_from(model, payload.get("architecture"), payload.get("model_class"))
    graph = trace_for_conversion(ann, claim=recipe.registry.claim_module)
    saved = payload["sites"]
    if list(graph.sites) != list(saved):
        graph = _as_prepared(ann, recipe, list(saved)) or graph
    if list(graph.sites) != list(saved):
        raise SnnFileError(mismatch.format(f"its activation sites are {_few(list(graph.sites))}, the file's are "
                                           f"{_few(list(saved))}") + ".")
    specs = {}
    for name, entry in saved.items():
        info: SiteInfo = graph.sites[name]
        for field_name, value in entry["info"].items():
            setattr(info, field_name, tuple(value) if field_name == "shape" and value is not None else value)
        try:
            specs[name] = NeuronSpec(**entry["spec"])
        except (TypeError, SnnbridgeError) as exc:
            raise SnnFileError(f"site {name!r}: the saved neuron spec is invalid ({exc}); the file is "
                               "damaged.") from exc
    snn = SpikingModel.build(graph, specs, factory, timesteps=payload["timesteps"], input_shape=payload["input_shape"],
                             recipe=payload["recipe"], report=payload.get("report") or {})
    state = payload["state_dict"]
    _add_created_biases(snn, state)
    own = snn.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{what}: {_few(keys)}" for what, keys in (("missing in the file", missing),
                                                            ("not in the model", unexpected),
                                                            ("different shapes", shapes)) if keys]
        raise SnnFileError(mismatch.format("; ".join(parts)) + ".")
    snn.load_state_dict(state)
    for name, site in snn.sites.items():
        site.corrections = [_restore(e, f"site {name!r} correction {i}")
                            for i, e in enumerate(saved[name]["corrections"])]
    snn.timestep_checks = [_restore(e, f"timestep check {i}") for i, e in enumerate(payload["timestep_checks"])]
    snn.decode_window = DecodeWindow(**payload["decode_window"])
    snn.time_chunk = payload["time_chunk"]
    snn.forward_on_means = payload["forward_on_means"]
    snn.architecture = payload.get("architecture")
    saved_surrogate = payload.get("surrogate")  # files from before surrogates were saved have none
    if saved_surrogate is not None:
        try:
            snn.set_surrogate(build_surrogate(saved_surrogate["recipe"], recipe.registry))
        except SnnbridgeError as exc:
            raise SnnFileError(f"the file's surrogate gradient {saved_surrogate['recipe']!r} cannot be set up here: "
                               f"{exc}") from exc
    return snn
