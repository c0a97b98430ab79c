"""examples/plugin_correction: a third-party package written against the public API only, pip-installed here.

It is built and installed offline into a private folder (tests/helpers/install.py); the
checks run in subprocesses whose PYTHONPATH holds that folder, so nothing else sees it.
"""

from __future__ import annotations

import ast
import json
import shutil
import textwrap
from pathlib import Path

import pytest

import snnbridge
from helpers.install import install_private, run_python

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "examples" / "plugin_correction"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meanmatch")
    site, env = install_private(SRC, tmp)
    try:
        yield env, tmp
    finally:
        shutil.rmtree(site, ignore_errors=True)


def test_the_module_uses_public_names_only():
    tree = ast.parse((SRC / "snnbridge_meanmatch.py").read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "snnbridge":
            assert node.module == "snnbridge", f"imports from {node.module}: only the package's public names"
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "snnbridge" or a.name == "snnbridge" for a in node.names)
    assert imported and set(imported) <= set(snnbridge.__all__), set(imported) - set(snnbridge.__all__)


def test_listed_with_the_shared_t_options(installed):
    env, tmp = installed
    records = {r["name"]: r for r in json.loads(run_python(["-m", "snnbridge", "plugins", "--json"], env, tmp))}
    rec = records["meanmatch"]
    assert (rec["distribution"], rec["kind"], rec["broken"]) == ("snnbridge-meanmatch-demo", "method", None)
    assert rec["t_specific"] is True and rec["stages"] == ["correct"]
    names = [o["name"] for o in rec["options"]]
    assert names == ["alpha", "samples", "lookahead", "mask_margin", "timesteps", "on_mismatch"]


_SCRIPT = textwrap.dedent("""
    import json, warnings, torch, snnbridge
    from helpers import data_driven as dd

    torch.set_num_threads(1)
    calib = dd.calibration_batches(4, 64)
    out = {}
    nets = {"ltb": (dd.trained_net(), [{"ltb": {"iterations": 8}}]),
            "qcfs": (dd.trained_for([{"qcfs": {"levels": 4, "lambda_init": 2.0}}]), ["qcfs"])}
    for label, (net, base) in nets.items():
        plain = snnbridge.convert(net, base, calibration=calib, timesteps=4, progress=False)
        fixed = snnbridge.convert(net, base + ["meanmatch"], calibration=calib, timesteps=4, progress=False)
        masked = snnbridge.convert(net, base + [{"meanmatch": {"lookahead": 2}}], calibration=calib, timesteps=4,
                                   backend="snntorch", progress=False)
        x = dd.test_set()[0][:64]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fixed(x, timesteps=3)  # shorter than calibrated: runs, with a warning
        out[label] = {
            "errors": [dd.total(dd.layer_errors(s, 4, net), "steps") for s in (plain, fixed)],
            "accuracy": [dd.accuracy(s) for s in (plain, fixed)],
            "tables": sorted({tuple(s.step_bias.shape) for s in fixed.specs.values()}),
            "checks": [repr(c) for c in fixed.timestep_checks],
            "warned": [str(w.message) for w in caught if w.category is snnbridge.TimestepMismatchWarning],
            "masked_steps_run": masked.steps_run,
            "recipe": fixed.recipe,
        }
        masked(x)
        out[label]["masks"] = [bool(site.mask is not None) for site in masked.sites.values()]
    print(json.dumps(out))
""")


def test_stacks_with_qcfs_and_ltb_and_removes_per_step_error(installed):
    env, tmp = installed
    out = json.loads(run_python(["-c", _SCRIPT], env, tmp, timeout=600).strip().splitlines()[-1])
    for label in ("ltb", "qcfs"):
        r = out[label]
        plain, fixed = r["errors"]
        assert fixed < 0.6 * plain, (label, r["errors"])  # measured: 0.47 -> 0.26 (ltb), 0.36 -> 0.11 (qcfs)
        assert r["accuracy"][1] >= r["accuracy"][0] - 0.02, (label, r["accuracy"])  # a demo: must not break the net
        assert all(t[0] == 4 for t in map(tuple, r["tables"])), r["tables"]  # one row per step of T = 4
        assert r["checks"] == ["TimestepCheck('meanmatch', T=4, warn)"]
        assert r["warned"] and "calibrated for T = 4" in r["warned"][0]
        assert r["masked_steps_run"] == 2 + 4 and all(r["masks"])  # the look-ahead, then masked counted runs
        assert list(r["recipe"][-1]) == ["meanmatch"] and r["recipe"][-1]["meanmatch"]["timesteps"] is None
