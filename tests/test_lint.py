"""The code stays lint-clean and type-checked, with the settings in pyproject.toml.

ruff (E, F, W, I, B, UP at 120 columns) over the library, its plugins and adapters, and mypy
over ``snnbridge/`` (the typed public API that ships ``py.typed``). Both run as subprocesses
of the installed dev tools, so a failure prints exactly what the tool prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the dev extra (pip install -e '.[dev]').")
    return found


def test_ruff_is_clean():
    done = subprocess.run([_tool("ruff"), "check", "--no-cache", "snnbridge", "plugins", "adapters"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean(tmp_path):
    env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / "mypy-cache"))  # never write into the checkout
    done = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
