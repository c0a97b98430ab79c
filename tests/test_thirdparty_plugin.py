"""A third-party plugin package, pip-installed during the test, works with no change to snnbridge.

``tests/thirdparty_plugin`` is a stand-alone distribution (``snnbridge-halfshift-demo``)
registering the method ``halfshift`` in the entry-point group ``snnbridge``, as any
third-party package would. The test builds and pip-installs it offline (the installed
setuptools, no build isolation, no index) into a private ``--target`` folder rather than the
shared virtualenv, so other tests and other processes never see it; the folder is removed
at the end. Entry points are read once per process, so the checks run in subprocesses whose
``PYTHONPATH`` holds that folder.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

import snnbridge
from helpers.install import install_private, run_python

PLUGIN_SRC = Path(__file__).resolve().parent / "thirdparty_plugin"
DIST, VERSION, NAME = "snnbridge-halfshift-demo", "0.3.1", "halfshift"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """pip-install the demo plugin into a private folder; yield (folder, environment for subprocesses, workdir)."""
    tmp = tmp_path_factory.mktemp("thirdparty")
    site, env = install_private(PLUGIN_SRC, tmp)
    try:
        yield site, env, tmp
    finally:
        shutil.rmtree(site, ignore_errors=True)  # "uninstall": nothing was written anywhere else


def _run(args, env, cwd):
    return run_python(args, env, cwd)


def test_installed_plugin_is_listed_by_the_cli(plugin_site):
    site, env, tmp = plugin_site
    assert any(p.name.startswith("snnbridge_halfshift_demo") and p.suffix == ".dist-info" for p in site.iterdir())
    records = {r["name"]: r for r in json.loads(_run(["-m", "snnbridge.cli", "plugins", "--json"], env, tmp))}
    assert {"maxnorm", "robustnorm", "torch", NAME} <= set(records)
    rec = records[NAME]
    assert (rec["distribution"], rec["version"], rec["kind"]) == (DIST, VERSION, "method")
    assert rec["stages"] == ["configure"] and rec["provides"] == ["v0_base"]
    assert rec["options"] == [{"name": "fraction", "type": "float", "default": 0.5,
                               "help": "v0 as a fraction of the threshold", "choices": None,
                               "range": "0 <= fraction <= 1", "required": False, "nullable": False}]
    # not visible in this process: the shared environment was left alone
    assert NAME not in snnbridge.get_registry().names()


_SCRIPT = textwrap.dedent("""
    import json, torch, snnbridge
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(),
                        nn.Linear(5, 3)).eval()
    cal = [torch.rand(8, 3, 6, 6) for _ in range(2)]
    out = {"specs": {}}
    for channelwise in (False, True):
        snn = snnbridge.convert(net, [{"maxnorm": {"channelwise": channelwise}}, {"halfshift": {"fraction": 0.5}}],
                                calibration=cal, timesteps=4, progress=False)
        for name, spec in snn.specs.items():
            th, v0 = spec.threshold, spec.v0
            out["specs"][f"{name}/{channelwise}"] = [torch.as_tensor(th).tolist(), torch.as_tensor(v0).tolist()]
    out["recipe"] = snn.recipe
    for bad in ({"fractoin": 0.5}, {"fraction": 2.0}):
        try:
            snnbridge.build_recipe(["maxnorm", {"halfshift": bad}])
            out.setdefault("errors", []).append(None)
        except snnbridge.OptionError as exc:
            out.setdefault("errors", []).append(str(exc))
    print(json.dumps(out))
""")


def test_installed_plugin_works_in_a_recipe(plugin_site):
    site, env, tmp = plugin_site
    out = json.loads(_run(["-c", _SCRIPT], env, tmp).strip().splitlines()[-1])
    assert out["recipe"] == [{"maxnorm": {"channelwise": True, "momentum": None}}, {"halfshift": {"fraction": 0.5}}]
    assert len(out["specs"]) == 4
    for key, (th, v0) in out["specs"].items():
        if isinstance(th, list):  # per-channel thresholds give per-channel initial potentials
            assert v0 == pytest.approx([0.5 * t for t in th]), key
        else:
            assert th > 0 and v0 == pytest.approx(0.5 * th), key
    unknown, out_of_range = out["errors"]
    assert unknown and "'halfshift'" in unknown and "Did you mean 'fraction'" in unknown
    assert out_of_range and "'halfshift'" in out_of_range and "0 <= fraction <= 1" in out_of_range
