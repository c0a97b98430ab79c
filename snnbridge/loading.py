"""Building an ANN from ``module:factory`` and loading its weights, with errors that say what does not fit.

Used by the command line (``--model`` / ``--checkpoint``) and by anyone who keeps model
architectures as importable factories::

    ann = load_model("examples.cifar10.model:make_model")
    load_checkpoint(ann, "runs/cifar10/ann.pt")         # a state_dict, or a dict holding one

Checkpoints are read with ``torch.load(weights_only=True)`` unless ``trust=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError, did_you_mean

#: keys under which training scripts commonly store the state_dict
STATE_KEYS = ("model", "state_dict", "model_state_dict", "net", "weights")


def _import(spec: str, module_name: str, attr: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    where = f"model factory {spec!r}"
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ModelLoadError(f"{where}: the file {module_name!r} does not exist.")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ModelLoadError(f"{where}: Python cannot import {module_name!r} as a module (is it a .py file?).")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"{where}: running {module_name} failed: {type(exc).__name__}: {exc} (the chained "
                                 "traceback shows where)") from exc
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ModelLoadError(
                f"{where}: cannot import module {module_name!r} (no module named {missing!r}). Run snnbridge from the "
                f"folder that contains it (the current directory, {cwd}, is importable), add its folder to PYTHONPATH, "
                f"or give the file path (path/to/file.py:{attr}).") from exc
        raise ModelLoadError(f"{where}: importing {module_name!r} failed because it needs the module {missing!r}, "
                             "which is not installed.") from exc
    except Exception as exc:
        raise ModelLoadError(f"{where}: importing {module_name!r} failed: {type(exc).__name__}: {exc} (the chained "
                             "traceback shows where)") from exc


def load_model(spec: str) -> nn.Module:
    """Build the ANN from ``module:factory`` (``module`` may be a dotted name or a path to a .py file).

    The factory is called without arguments (a module instance is used as it is). The
    current directory is importable.
    """
    if not isinstance(spec, str):
        raise ModelLoadError(f"a model factory is a string MODULE:FACTORY, got {type(spec).__name__}.")
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"a model factory must look like MODULE:FACTORY (e.g. examples.cifar10.model:make_model), "
                             f"got {spec!r}.")
    where = f"model factory {spec!r}"
    obj: Any = _import(spec, module_name, attr)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            raise ModelLoadError(f"{where}: {getattr(obj, '__name__', module_name)!r} has no attribute {part!r}."
                                 f"{did_you_mean(part, names)} Callables there: {', '.join(names[:12]) or 'none'}.")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise ModelLoadError(f"{where}: {attr!r} is of type {type(obj).__name__}, not a function returning a model.")
    try:
        required = [p.name for p in inspect.signature(obj).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):  # no signature (some builtins): just call it
        required = []
    if required:
        raise ModelLoadError(f"{where}: {attr}() needs the argument(s) {', '.join(required)}; the factory must work "
                             "without arguments: wrap it in a small function with your settings.")
    model = obj()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{where}: {attr}() returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict stored in ``path`` (directly, under one of :data:`STATE_KEYS`, or as a pickled module)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"checkpoint {str(path)!r} does not exist; give the file saved with "
                             "torch.save(model.state_dict(), ...).")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"checkpoint {str(path)!r} holds Python objects besides tensors, which the safe loader "
                             f"refuses ({str(exc).splitlines()[0]}). Save a plain state_dict, or pass trust=True "
                             "(--trust-checkpoint) if you trust the file.") from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot read checkpoint {str(path)!r}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
            if isinstance(obj.get(key), nn.Module):
                obj = obj[key].state_dict()
                break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        what = (f"a dict with keys {', '.join(sorted(map(str, obj))[:8])}" if isinstance(obj, dict)
                else type(obj).__name__)
        raise ModelLoadError(f"checkpoint {str(path)!r} is not a state_dict (it holds {what}); save "
                             f"model.state_dict(), or a dict with the state_dict under one of {', '.join(STATE_KEYS)}.")
    return obj


def load_checkpoint(model: nn.Module, path: str | os.PathLike, trust: bool = False) -> None:
    """Load weights into ``model`` from a state_dict file (or a dict holding one); errors say what does not fit."""
    state = read_state_dict(path, trust)
    own = model.state_dict()
    if state and not any(k in own for k in state) and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing in the checkpoint: {_few(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_few(unexpected)}")
        if shapes:
            parts.append(f"different shapes: {_few(shapes)}")
        raise ModelLoadError(f"checkpoint {str(path)!r} does not fit the model ({'; '.join(parts)}). Check that the "
                             "model factory builds the architecture the checkpoint was trained with (same width, depth "
                             "and number of classes).")
    model.load_state_dict(state)
