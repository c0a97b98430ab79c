"""Run records: what a command-line run needs to be repeated, as JSON next to its results.

``snnbridge convert --out snn.pt`` writes ``snn.run.json``; ``snnbridge evaluate --json acc.json``
(or ``--plot acc.png``) writes ``acc.run.json``. A record holds the command line, the resolved
recipe (every option with its value), seeds, the exact calibration and evaluation image
indices, the data path and normalisation, the model and a sha256 of its checkpoint, the
backend and its options, T, and the versions of the packages involved. Two runs of the same
command on the same data give the same record except under :data:`TIMING_KEY`.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
from pathlib import Path
from typing import Any

FORMAT = "snnbridge-run"
FORMAT_VERSION = 1
#: the only key whose content differs between two identical runs (clock times and durations)
TIMING_KEY = "timing"
#: distributions whose versions a record lists (None when not installed)
PACKAGES = ("torch", "torchvision", "numpy", "spikingjelly", "snntorch", "tqdm", "pluggy")


def now() -> str:
    """The current UTC time, ISO 8601, to the millisecond."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions of Python, snnbridge and :data:`PACKAGES`, read from the installed metadata (nothing is imported)."""
    from . import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "snnbridge": __version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name) if importlib.util.find_spec(name) else None
        except (importlib.metadata.PackageNotFoundError, ValueError):
            out[name] = None
    return out


def record_path(result: str | os.PathLike) -> Path:
    """Where the record of a result file goes: ``snn.pt`` -> ``snn.run.json`` in the same folder."""
    return Path(result).with_suffix(".run.json")


def header(command: str, argv: list[str]) -> dict[str, Any]:
    """The first keys of every record: format, command, the command line as given, versions, platform."""
    import shlex

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "command": command, "argv": list(argv),
            "command_line": shlex.join(["snnbridge", *argv]), "cwd": os.getcwd(), "versions": package_versions(),
            "platform": platform.platform()}


def write(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``record`` as indented JSON (to a temporary name first, then renamed); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without :data:`TIMING_KEY`: what two identical runs share."""
    return {k: v for k, v in record.items() if k != TIMING_KEY}
