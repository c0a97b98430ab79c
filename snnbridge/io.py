"""Saving and loading converted SNNs: ``snnbridge.save(snn, path)`` / ``snnbridge.load(path, model=...)``.

The file holds tensors and plain data only (:mod:`snnbridge.snnfile`): it loads with
``torch.load(path, weights_only=True)``, so reading it never runs code from the file, and it
is about the size of the weights. Loading rebuilds the SNN from the ANN's architecture, like
``load_state_dict``, without re-running calibration; the outputs are bit for bit the saved
SNN's::

    snnbridge.save(snn, "snn.pt", architecture="mypkg.models:make_cnn", metadata={"mean": [0.49, 0.48, 0.45]})
    snn = snnbridge.load("snn.pt")                         # builds mypkg.models:make_cnn()
    snn = snnbridge.load("snn.pt", model=make_cnn())       # or give the architecture
    snn, info = snnbridge.load("snn.pt", with_info=True)   # info: recipe, backend, T, versions, metadata ...

Loading needs the recipe's plugins and the backend installed (their correction classes are
looked up by name among the imported ones, never unpickled).
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SnnbridgeError, SnnFileError
from .plugin_manager import get_registry
from .runtime import SpikingModel
from .snnfile import FORMAT, FORMAT_VERSION, rebuild, to_payload

__all__ = ["save", "load", "SnnFileError"]

PICKLE_FORMAT = "snnbridge-snn-pickle"


def _versions() -> dict[str, str]:
    from . import __version__

    out = {"snnbridge_version": __version__, "torch_version": torch.__version__,
           "python_version": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("spikingjelly", "snntorch"):
        module = sys.modules.get(dist)
        if module is not None and getattr(module, "__version__", None):
            out[f"{dist}_version"] = str(module.__version__)
    return out


def save(snn: SpikingModel, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
         architecture: str | None = None, pickled: bool = False) -> Path:
    """Save a converted SNN to ``path`` (parent folders are created); return the path.

    :param metadata: plain data to keep with it (numbers, strings, lists, dicts, tensors),
        e.g. the normalisation the SNN expects; returned by ``load(..., with_info=True)``.
    :param architecture: ``module:factory`` that builds the ANN (default:
        ``snn.architecture``, which the command line sets); lets :func:`load` run without
        ``model=``.
    :param pickled: write a pickle of the whole module instead (for SNNs holding objects
        the safe format cannot store). **Unsafe to share**: loading it needs
        ``load(..., trusted=True)``, which runs code stored in the file.

    The file is written to a temporary name first and renamed, so an interrupted save
    never leaves a truncated file behind.
    """
    if not isinstance(snn, SpikingModel):
        raise SnnFileError(f"snnbridge.save takes the SpikingModel returned by snnbridge.convert, got "
                           f"{type(snn).__name__}; save other modules with torch.save(module.state_dict(), path).")
    if architecture is not None and (not isinstance(architecture, str) or ":" not in architecture):
        raise SnnFileError(f"architecture must be a 'module:factory' string (e.g. 'mypkg.models:make_cnn'), got "
                           f"{architecture!r}.")
    architecture = architecture or snn.architecture
    saved_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if pickled:
        payload: dict = {"format": PICKLE_FORMAT, "format_version": 1, **_versions(), "saved_at": saved_at,
                         "metadata": dict(metadata or {}), "snn": snn}
    else:
        payload = to_payload(snn, architecture=architecture, metadata=metadata, versions=_versions(),
                             saved_at=saved_at)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnnFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose a writable location.") from exc
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise SnnFileError(f"this SNN cannot be saved pickled: {exc}. A plugin probably attached a lambda or nested "
                           "function; attach module-level objects instead.") from exc
    except OSError as exc:
        raise SnnFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path, map_location: Any, trusted: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if trusted:
            raise SnnFileError(f"cannot read {path}: {exc}.") from exc
        raise SnnFileError(f"{path} holds pickled Python objects (an SNN saved with pickled=True or by an older "
                           "snnbridge), which the safe loader refuses: unpickling runs code stored in the file. "
                           "If you trust its source, load it with snnbridge.load(path, trusted=True), then save it "
                           "again with snnbridge.save to get a safe file.") from exc
    except (ModuleNotFoundError, AttributeError) as exc:
        raise SnnFileError(f"{path} was saved with code that is not available here ({exc}); install the plugins "
                           "and snnbridge version it was converted with.") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SnnFileError(f"cannot read {path} as a saved SNN ({first}); the file is truncated or damaged, or is "
                           "not a torch file. Save it again with snnbridge.save.") from exc


def _check_format(path: Path, obj: Any) -> None:
    if not isinstance(obj, dict) or obj.get("format") not in (FORMAT, PICKLE_FORMAT):
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        hint = (" It looks like the ANN's checkpoint: convert it first (`snnbridge convert --checkpoint ...`)."
                if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) else "")
        raise SnnFileError(f"{path} is not an SNN saved by snnbridge.save (it holds {what}).{hint}")
    version = obj.get("format_version")
    if obj["format"] == FORMAT and (not isinstance(version, int) or version > FORMAT_VERSION):
        raise SnnFileError(f"{path} was written by snnbridge {obj.get('snnbridge_version', '?')} in file format "
                           f"{version}; this snnbridge reads format {FORMAT_VERSION} and older. Upgrade snnbridge "
                           "(pip install -U snnbridge).")
    if obj["format"] == FORMAT and isinstance(version, int) and version >= 2:
        needed = ("recipe", "backend", "backend_options", "timesteps", "sites", "state_dict", "decode_window",
                  "timestep_checks", "input_shape", "time_chunk", "forward_on_means")
        lost = [k for k in needed if k not in obj]
        if lost:
            raise SnnFileError(f"{path} lacks {', '.join(lost)}; the file is damaged or was not written by "
                               "snnbridge.save. Save the SNN again.")


def load(path: str | os.PathLike, model: nn.Module | Callable[[], nn.Module] | str | None = None, *,
         map_location: Any = "cpu", with_info: bool = False, trusted: bool = False, plugins: Iterable[Any] = ()):
    """Load an SNN saved by :func:`save`; with ``with_info=True`` return ``(snn, info)``.

    :param model: the ANN's architecture: an ``nn.Module`` (its weights are not used and it
        is not changed), a function that builds one, or ``"module:factory"``. Default: the
        architecture recorded in the file (``save(..., architecture=...)``, set by the
        command line); importing it runs that installed module, as ``--model`` does.
    :param map_location: passed to ``torch.load`` (default ``"cpu"``; move the SNN with
        ``.to(device)`` afterwards).
    :param trusted: also read files written with ``save(..., pickled=True)`` (or by older
        snnbridge). **Unpickling runs code stored in the file**: only for files you made.
    :param plugins: plugin objects the recipe used that are not installed as entry points.

    ``info`` holds the file's plain data except the weights: ``recipe``, ``backend``,
    ``timesteps``, ``warmup``, ``steps_run``, versions, ``architecture``, ``metadata`` ...
    """
    path = Path(path)
    if not path.is_file():
        raise SnnFileError(f"SNN file {str(path)!r} does not exist; create one with `snnbridge convert --out ...` or "
                           "snnbridge.save(snn, path).")
    obj = _read(path, map_location, trusted)
    _check_format(path, obj)
    if obj["format"] == PICKLE_FORMAT or obj["format_version"] == 1:
        snn = obj.get("snn")
        if not isinstance(snn, SpikingModel):
            raise SnnFileError(f"{path} is damaged: its pickled SNN is a {type(snn).__name__}. Save it again.")
        info = {k: v for k, v in obj.items() if k != "snn"}
    else:
        if model is not None and not isinstance(model, (nn.Module, str)) and not callable(model):
            raise SnnFileError(f"model= must be the ANN (an nn.Module), a function that builds it, or "
                               f"'module:factory', got {type(model).__name__}.")
        try:
            snn = rebuild(obj, model, get_registry(list(plugins)))
        except SnnFileError as exc:
            raise SnnFileError(f"{path}: {exc}") from exc
        except SnnbridgeError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnnFileError(f"{path} is damaged ({type(exc).__name__}: {exc}); save the SNN again.") from exc
        info = {k: v for k, v in obj.items() if k not in ("state_dict", "sites")}
        if isinstance(map_location, (str, torch.device)):
            snn.to(map_location)
    saved_version = info.get("snnbridge_version")
    from . import __version__

    if saved_version and saved_version.split(".")[:2] != __version__.split(".")[:2]:
        warnings.warn(f"{path} was saved by snnbridge {saved_version}, this is {__version__}; check its outputs.",
                      stacklevel=2)
    snn.eval()
    return (snn, info) if with_info else snn
