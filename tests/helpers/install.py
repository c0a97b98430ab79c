"""pip-install a plugin package offline into a private folder, for tests that need entry points.

The package is built from a copy of its sources (an in-tree build writes build/ and
*.egg-info next to them) with the installed setuptools, no build isolation and no index,
into ``--target``: the shared virtualenv is never touched. Entry points are read once per
process, so the checks run in subprocesses whose ``PYTHONPATH`` holds that folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def install_private(src: Path, tmp: Path) -> tuple[Path, dict]:
    """Install ``src`` into ``tmp/site``; return the folder and an environment for subprocesses that see it."""
    copy = tmp / "src"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "--target", str(site), str(copy)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    env = dict(os.environ, OMP_NUM_THREADS="1", SNNBRIDGE_DISABLE_PLUGINS="")
    env.pop("SNNBRIDGE_LOAD_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return site, env


def run_python(args: list[str], env: dict, cwd: Path, timeout: int = 300) -> str:
    """Run ``python *args``; return stdout (the test fails with both streams on a non-zero exit)."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
