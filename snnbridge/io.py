"""Saving and loading converted SNNs: ``snnbridge.save(snn, path)`` / ``snnbridge.load(path)``.

The file is a ``torch.save`` of a dict holding the pickled :class:`~snnbridge.runtime.SpikingModel`
and its metadata (recipe, backend, T, warm-up steps, snnbridge and torch versions, and
whatever the caller adds, e.g. the data normalisation the SNN expects)::

    snnbridge.save(snn, "snn.pt", metadata={"mean": [0.49, 0.48, 0.45]})
    snn = snnbridge.load("snn.pt")                       # ready to run: snn(x), snn.sweep(x)
    snn, info = snnbridge.load("snn.pt", with_info=True)  # info: the metadata dict

**Trust.** A pickled module can only be read with ``torch.load(..., weights_only=False)``,
which runs code stored in the file: load only files you (or someone you trust) made.
Loading needs the same plugins installed (the neuron classes of the backend are pickled
by reference), and a compatible snnbridge version.
"""

from __future__ import annotations

import datetime
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import SnnbridgeError
from .runtime import SpikingModel

FORMAT = "snnbridge-snn"
FORMAT_VERSION = 1


class SnnFileError(SnnbridgeError):
    """A saved-SNN file is missing, unreadable, or not written by :func:`snnbridge.save`."""


def save(snn: SpikingModel, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Save a converted SNN with its metadata to ``path`` (parent folders are created); return the path.

    The file is written to a temporary name first and renamed, so an interrupted save never
    leaves a truncated file behind.
    """
    if not isinstance(snn, SpikingModel):
        raise SnnFileError(f"snnbridge.save takes the SpikingModel returned by snnbridge.convert, got "
                           f"{type(snn).__name__}; save other modules with torch.save.")
    from . import __version__

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "snnbridge_version": __version__,
        "torch_version": torch.__version__,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": snn.recipe,
        "backend": snn.backend_name,
        "timesteps": snn.timesteps,
        "warmup": snn.warmup,
        "lookahead": getattr(snn, "lookahead", 0),
        "steps_run": snn.steps_run,
        "metadata": dict(metadata or {}),
        "snn": snn,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnnFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose a writable location.") from exc
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise SnnFileError(f"this SNN cannot be saved: {exc}. A plugin probably attached a runtime correction that "
                           "cannot be pickled (a lambda or nested function); plugins should attach module-level "
                           "functions or objects.") from exc
    except OSError as exc:
        raise SnnFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path: str | os.PathLike, map_location: Any = "cpu", *, with_info: bool = False):
    """Load an SNN saved by :func:`save`; with ``with_info=True`` return ``(snn, info)``.

    ``info`` holds the saved metadata (``recipe``, ``backend``, ``timesteps``, ``warmup``,
    ``snnbridge_version``, ``metadata``, ...). ``map_location`` is passed to ``torch.load``
    (default ``"cpu"``; move the SNN with ``.to(device)`` afterwards).

    Uses ``torch.load(weights_only=False)``: the file contains a pickled module, and
    unpickling runs code from the file. Load only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise SnnFileError(f"SNN file {str(path)!r} does not exist; create one with `snnbridge convert --out ...` or "
                           "snnbridge.save(snn, path).")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise SnnFileError(f"{path} was saved with code that is not available here ({exc}); install the plugins and "
                           "snnbridge version it was converted with.") from exc
    except Exception as exc:  # torch raises several kinds of errors on files that are not checkpoints
        raise SnnFileError(f"cannot read {path} as a saved SNN: {type(exc).__name__}: {exc}.") from exc
    if isinstance(obj, SpikingModel):  # a bare torch.save(snn, ...)
        info = {"format": FORMAT, "recipe": obj.recipe, "backend": obj.backend_name, "timesteps": obj.timesteps,
                "warmup": obj.warmup, "metadata": {}}
        snn = obj
    elif isinstance(obj, dict) and obj.get("format") == FORMAT and isinstance(obj.get("snn"), SpikingModel):
        snn = obj["snn"]
        info = {k: v for k, v in obj.items() if k != "snn"}
    else:
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise SnnFileError(f"{path} is not an SNN saved by snnbridge (it holds {what}). If it is the ANN's "
                           "checkpoint, convert it first: `snnbridge convert --checkpoint ...`.")
    snn.eval()
    return (snn, info) if with_info else snn
