"""The built wheel installs snnbridge, snnbridge.plugins and snnbridge.adapters, and registers the plugins.

The wheel is built offline from a copy of the working tree (tracked and untracked,
not-ignored files: what a fresh checkout plus your edits would hold), so the build never
writes into the shared checkout. It is then installed with ``pip --target`` and imported in
a subprocess that sees neither the repository's source folders nor the editable install.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache",
                                 "*.pt", "*.pth", "*.tar.gz", "runs", ".cache")


def _copy_tree(dst: Path) -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(REPO, dst, ignore=_IGNORE)
        return
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    src, out = tmp / "src", tmp / "dist"
    _copy_tree(src)
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
                           "--outdir", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"building the wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(out.glob("snnbridge-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    for required in ("snnbridge/__init__.py", "snnbridge/hookspecs.py", "snnbridge/cli.py", "snnbridge/io.py",
                     "snnbridge/data.py", "snnbridge/plugins/maxnorm.py", "snnbridge/plugins/robustnorm.py",
                     "snnbridge/adapters/torch_ref.py", "snnbridge/py.typed", "snnbridge/snnfile.py"):
        assert required in names, f"{required} missing from the wheel"
    tops = {n.split("/")[0] for n in names}
    assert tops == {"snnbridge", dist_info}, f"unexpected top-level entries in the wheel: {sorted(tops)}"
    for stray in ("plugins", "adapters", "tests", "examples", "benchmarks"):
        assert stray not in tops
    ep = configparser.ConfigParser()
    ep.read_string(entry_points)
    assert {"maxnorm", "robustnorm", "torch"} <= set(ep["snnbridge"])
    assert ep["snnbridge"]["maxnorm"].strip() == "snnbridge.plugins.maxnorm"
    assert ep["snnbridge"]["torch"].strip() == "snnbridge.adapters.torch_ref"
    assert ep["console_scripts"]["snnbridge"].strip() == "snnbridge.cli:main"


_CHECK = textwrap.dedent("""
    import importlib.metadata as md, json, os, sys
    import snnbridge.plugins.maxnorm, snnbridge.adapters.torch_ref, snnbridge.cli
    eps = {ep.name: ep for ep in md.entry_points(group="snnbridge")}
    out = {"path": [os.path.abspath(p) for p in sys.path], "files": {}, "dists": {}}
    for name in ("maxnorm", "robustnorm", "torch"):
        ep = eps[name]
        out["files"][name] = ep.load().__file__
        out["dists"][name] = [ep.dist.name, str(ep.dist.locate_file(""))]
    out["snnbridge"] = sys.modules["snnbridge"].__file__
    out["cli"] = [ep.value for ep in md.entry_points(group="console_scripts") if ep.name == "snnbridge"]
    print(json.dumps(out))
""")


def test_installed_wheel_imports_and_resolves_entry_points(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "-q", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) in (["snnbridge"],
                                                                                             ["bin", "snnbridge"])
    # -S: no site-packages processing, so the editable install's path hook is not active; the
    # dependencies (torch, pluggy, ...) come from the virtualenv's site-packages listed after the target.
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    proc = subprocess.run([sys.executable, "-S", "-c", _CHECK], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any(Path(p).resolve() in (REPO, REPO / "tests") for p in out["path"])
    assert out["snnbridge"].startswith(str(target))
    for name in ("maxnorm", "robustnorm", "torch"):
        assert out["files"][name].startswith(str(target)), out["files"][name]
        assert out["dists"][name] == ["snnbridge", str(target)]
    assert out["cli"] == ["snnbridge.cli:main"]
