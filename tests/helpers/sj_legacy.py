"""SpikingJelly 0.0.0.0.14 beside the environment's SpikingJelly 2: locate or create its install.

The two generations cannot share one environment (same package name), so the legacy
version lives in its own ``pip install --target`` directory, put first on ``PYTHONPATH`` of a
subprocess. The directory is ``$SNNBRIDGE_SJ_LEGACY_DIR`` if set, else ``<repo>/.cache/sj014``
(git-ignored). If it does not hold SpikingJelly 0.0.0.0.14 yet, it is installed there
(``--no-deps``: at import time 0.0.0.0.14 needs only torch, numpy and tqdm, which the
environment has; CuPy is imported inside a try block and is optional).

Prepare it ahead of the tests (idempotent)::

    .venv/bin/python tests/helpers/sj_legacy.py
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "0.0.0.0.14"
ENV_VAR = "SNNBRIDGE_SJ_LEGACY_DIR"
HELPERS = Path(__file__).resolve().parent
TESTS = HELPERS.parent
REPO = TESTS.parent
DEFAULT_DIR = REPO / ".cache" / "sj014"


def _ready(d: Path) -> bool:
    return (d / f"spikingjelly-{VERSION}.dist-info").is_dir() and (d / "spikingjelly" / "activation_based"
                                                                    / "neuron.py").is_file()


def legacy_dir() -> Path:
    """The directory holding SpikingJelly 0.0.0.0.14, installing it there first if needed."""
    d = Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve()
    if _ready(d):
        return d
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(d.parent / f".{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers install once
        if _ready(d):
            return d
        tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
               "--target", str(tmp), f"spikingjelly=={VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not _ready(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            by_hand = " ".join(cmd[:-2] + [str(d), cmd[-1]])
            raise RuntimeError(f"could not install SpikingJelly {VERSION} into {d} (needed by the legacy-backend "
                               f"tests):\n{proc.stdout}\n{proc.stderr}\nInstall it by hand with\n  {by_hand}\nor point "
                               f"{ENV_VAR} at a directory that holds it.")
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)
    return d


def legacy_env() -> dict:
    """Environment for a subprocess whose ``import spikingjelly`` finds 0.0.0.0.14 (tests/ importable too)."""
    env = dict(os.environ)
    paths = [str(legacy_dir()), str(TESTS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_legacy_checks(timeout: int = 600) -> dict:
    """Run tests/helpers/sj_legacy_checks.py under SpikingJelly 0.0.0.0.14; return its JSON report."""
    script = HELPERS / "sj_legacy_checks.py"
    proc = subprocess.run([sys.executable, str(script)], env=legacy_env(), cwd=str(REPO), capture_output=True,
                          text=True, timeout=timeout)
    marker = "SJ_LEGACY_REPORT "
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the SpikingJelly {VERSION} check script failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(marker):])


if __name__ == "__main__":
    print(legacy_dir())
