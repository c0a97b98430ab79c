"""The plugin registry: broken third-party plugins are contained, environment variables restrict and trace.

Fake distributions (a ``*.dist-info`` folder with entry points, plus plugin modules) are
written to a temporary folder put on ``sys.path``; ``importlib.metadata`` finds them exactly
as it finds pip-installed packages.
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings

import pytest
import torch

import snnbridge
from helpers import zoo
from snnbridge import plugin_manager
from snnbridge.cli import main
from snnbridge.plugin_manager import PluginLoadWarning, Registry

GOOD = '''
from snnbridge import Option, PluginInfo, hookimpl

@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="a working third-party plugin", provides=("v0_base",))

@hookimpl
def snnbridge_add_options():
    return [Option("fraction", float, 0.5, "v0 / theta")]

@hookimpl
def snnbridge_configure_neuron(spec, options):
    return spec.replace(v0=options["fraction"] * spec.threshold)
'''

PLUGINS = {
    "fakegood": GOOD,
    "importfail": "raise RuntimeError('boom at import')\n",
    "nohooks": "X = 1\n",
    "typohook": GOOD + "\n@hookimpl\ndef snnbridge_estimate_treshold(ctx):\n    return {}\n",
    "badarg": GOOD.replace("def snnbridge_configure_neuron(spec, options):",
                           "def snnbridge_configure_neuron(spec, layer):"),
    "inforaises": "from snnbridge import hookimpl\n\n@hookimpl\ndef snnbridge_plugin_info():\n"
                  "    raise ValueError('no info')\n",
    "infotype": "from snnbridge import hookimpl\n\n@hookimpl\ndef snnbridge_plugin_info():\n"
                "    return {'summary': 'x'}\n",
    "dupoption": GOOD.replace('return [Option("fraction", float, 0.5, "v0 / theta")]',
                              'return [Option("a", int, 1), Option("a", int, 2)]'),
    "clashoption": GOOD.replace('provides=("v0_base",))', 'provides=("v0_base",), t_specific=True)').replace(
        'return [Option("fraction", float, 0.5, "v0 / theta")]', 'return [Option("timesteps", int, 4)]'),
    "badcap": GOOD.replace('provides=("v0_base",)', 'provides=("treshold",)'),
    "claimraises": GOOD.replace('provides=("v0_base",))', 'provides=("quantized_ann",))') + textwrap.dedent('''
        @hookimpl
        def snnbridge_claim_module(module):
            raise KeyError("claim bug")
        '''),
    "hookraises": textwrap.dedent('''
        from snnbridge import PluginInfo, hookimpl

        @hookimpl
        def snnbridge_plugin_info():
            return PluginInfo(summary="raises while estimating", provides=("threshold",))

        @hookimpl
        def snnbridge_estimate_threshold(ctx):
            return 1 / 0
        '''),
}


def _write_dist(root, dist, names, version="1.0"):
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[snnbridge]\n" + "".join(f"{n} = snnb_fake_{n}\n" for n in names))


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    for name, source in PLUGINS.items():
        (tmp_path / f"snnb_fake_{name}.py").write_text(source)
    _write_dist(tmp_path, "snnb-fake", list(PLUGINS))
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in (plugin_manager.ENV_DISABLE, plugin_manager.ENV_LOAD, plugin_manager.ENV_TRACE):
        monkeypatch.delenv(var, raising=False)
    plugin_manager.refresh()
    yield tmp_path
    for name in PLUGINS:
        sys.modules.pop(f"snnb_fake_{name}", None)
    plugin_manager.refresh()


@pytest.fixture
def registry(fake_site):
    with pytest.warns(PluginLoadWarning) as caught:
        reg = Registry()
    return reg, [str(w.message) for w in caught]


EXPECTED_REASONS = {
    "importfail": "failed to import 'snnb_fake_importfail': RuntimeError: boom at import",
    "nohooks": "does not implement snnbridge_plugin_info",
    "typohook": "unknown hook 'snnbridge_estimate_treshold' Did you mean 'snnbridge_estimate_threshold'",
    "badarg": "Argument(s) {'layer'} are declared in the hookimpl but can not be found in the hookspec",
    "inforaises": "snnbridge_plugin_info raised ValueError: no info",
    "infotype": "must return snnbridge.PluginInfo, got dict",
    "dupoption": "the option 'a' is declared twice",
    "clashoption": "'timesteps' is declared twice (the core adds it to every t_specific plugin)",
    "badcap": "unknown capability 'treshold' Did you mean 'threshold'",
}


def test_each_broken_plugin_is_reported_by_name_and_the_others_work(registry):
    reg, warned = registry
    assert set(EXPECTED_REASONS) <= set(reg.broken)
    for name, reason in EXPECTED_REASONS.items():
        assert reason in reg.broken[name].reason, (name, reg.broken[name].reason)
        assert reg.broken[name].distribution == "snnb-fake"
        assert any(f"plugin {name!r}" in w and "left out" in w for w in warned), name
    want = {"fakegood", "hookraises", "claimraises", "maxnorm", "robustnorm", "torch", "spikingjelly"}
    assert want <= set(reg.names())


def test_a_recipe_naming_a_broken_plugin_gets_the_reason(registry):
    reg, _ = registry
    with pytest.raises(snnbridge.PluginLoadError, match="'importfail' .* is installed but broken: failed to import"):
        snnbridge.build_recipe(["maxnorm", "importfail"], registry=reg)
    recipe = snnbridge.build_recipe(["maxnorm", "fakegood"], registry=reg)
    assert recipe.names == ["maxnorm", "fakegood"] and recipe.active_provider("v0_base").name == "fakegood"


def test_conversion_survives_a_raising_claim_hook_and_names_a_raising_stage_hook(registry):
    reg, _ = registry
    recipe = snnbridge.build_recipe(["maxnorm", "fakegood"], registry=reg)
    with pytest.warns(PluginLoadWarning, match="'claimraises'.*snnbridge_claim_module raised KeyError"):
        snn = snnbridge.convert(zoo.mlp(3, 4, 2), recipe, calibration=[torch.rand(8, 3)], timesteps=4, progress=False)
    assert "claimraises" in reg.broken and all(isinstance(s.v0, float) and s.v0 > 0 for s in snn.specs.values())
    recipe = snnbridge.build_recipe(["hookraises"], registry=reg)
    with pytest.raises(snnbridge.PluginError, match=r"'hookraises' \(snnb-fake 1.0\) failed in "
                                                    r"snnbridge_estimate_threshold: ZeroDivisionError"):
        snnbridge.convert(zoo.mlp(3, 4, 2), recipe, example_input=torch.rand(2, 3), timesteps=4, progress=False)


def test_cli_lists_broken_plugins_and_keeps_working(fake_site, capsys):
    with pytest.warns(PluginLoadWarning):
        rc = main(["plugins", "--json"])
    assert rc == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["nohooks"]["kind"] == "broken" and "snnbridge_plugin_info" in rows["nohooks"]["broken"]
    assert rows["fakegood"]["broken"] is None and rows["maxnorm"]["broken"] is None
    assert main(["plugins"]) == 0  # the same (cached) registry: warned once, listed again
    out = capsys.readouterr().out
    assert "Broken plugins" in out and "BROKEN" in out and "boom at import" in out


def test_two_distributions_with_one_name(fake_site):
    _write_dist(fake_site, "snnb-other", ["fakegood"])
    plugin_manager.refresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = Registry()
    assert any("registered by several distributions" in str(w.message) for w in caught)
    assert "fakegood" in reg.broken and "snnb-fake" in reg.broken["fakegood"].reason


def test_disable_and_load_lists(fake_site, monkeypatch):
    monkeypatch.setenv(plugin_manager.ENV_DISABLE, ",".join(list(EXPECTED_REASONS) + ["claimraises", "opi"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)  # nothing broken is even imported
        reg = Registry()
    assert "opi" not in reg.names() and "fakegood" in reg.names() and not reg.broken
    with pytest.raises(snnbridge.UnknownPluginError, match="'opi' is disabled"):
        snnbridge.build_recipe(["maxnorm", "opi"], registry=reg)
    monkeypatch.setenv(plugin_manager.ENV_LOAD, "")  # no third-party plugin at all; snnbridge's own stay
    reg = Registry()
    assert not any(n in reg.names() for n in PLUGINS) and {"maxnorm", "torch"} <= set(reg.names())
    monkeypatch.setenv(plugin_manager.ENV_LOAD, "fakegood")
    monkeypatch.delenv(plugin_manager.ENV_DISABLE)
    assert [n for n in Registry().names() if n in PLUGINS] == ["fakegood"]


def test_config_disable_list(tmp_path):
    (tmp_path / "r.yaml").write_text("recipe: [maxnorm, opi]\ndisable: [opi]\n")
    cfg = snnbridge.load_config(tmp_path / "r.yaml")
    assert cfg.disable == ["opi"]
    with pytest.raises(snnbridge.UnknownPluginError, match="'opi' is disabled"):
        snnbridge.build_recipe(cfg.recipe, disable=cfg.disable)


def test_trace_prints_every_hook_call_in_order(monkeypatch, capsys):
    monkeypatch.setenv(plugin_manager.ENV_TRACE, "1")
    plugin_manager.refresh()
    try:
        snnbridge.convert(zoo.mlp(3, 4, 2), ["maxnorm", "opi"], calibration=[torch.rand(8, 3)], timesteps=4,
                          progress=False)
    finally:
        monkeypatch.delenv(plugin_manager.ENV_TRACE)
        plugin_manager.refresh()
    err = capsys.readouterr().err
    calls = [line.split()[2] for line in err.splitlines() if line.startswith("snnbridge trace:") and "[" in line]
    assert "snnbridge_plugin_info" in calls
    stages = [c for c in calls if c in ("snnbridge_estimate_threshold", "snnbridge_configure_neuron",
                                        "snnbridge_make_neuron", "snnbridge_correct_error")]
    assert stages.index("snnbridge_estimate_threshold") < stages.index("snnbridge_configure_neuron") \
        < stages.index("snnbridge_make_neuron")
    assert "snnbridge_estimate_threshold [maxnorm]" in err and "snnbridge_configure_neuron [opi]" in err
    assert "returned" in err and " ms)" in err


def test_aliases_resolve_to_the_canonical_plugin():
    reg = snnbridge.get_registry()
    assert reg.canonical("calibration") == "snn_calibration" and reg.has("calibration")
    recipe = snnbridge.build_recipe([{"calibration": {"preset": "light"}}])
    assert recipe.names == ["snn_calibration"] and recipe.to_list()[0]["snn_calibration"]["preset"] == "light"
    with pytest.raises(snnbridge.PluginConflictError, match="appears twice"):
        snnbridge.build_recipe(["maxnorm", "calibration", "snn_calibration"])


@pytest.mark.parametrize("recipe, capability, provider", [
    (["maxnorm", "calibration"], "step_shift", "snn_calibration"),    # the fallback shift is active
    (["ltb", "calibration"], "step_shift", None),                       # ... and yields to ltb's v0 = theta/2
    (["maxnorm", "opi", "calibration"], "step_shift", None),
    (["maxnorm", "opi", "calibration"], "v0_base", "opi"),
    (["qcfs"], "v0_base", "qcfs"),                                      # qcfs's fallback theta/2
    (["qcfs", {"opi": {"fraction": 0.0}}], "v0_base", "opi"),           # ... overridden by opi
    (["calibration"], "threshold", "snn_calibration"),                  # the clipping search as fallback
    (["ltb", "calibration"], "threshold", "ltb"),
    (["qcfs", "cos", "srp"], "residual_mask", "srp"),
    (["maxnorm"], "v0_base", None),
])
def test_active_provider_answers_who_writes_what(recipe, capability, provider):
    got = snnbridge.build_recipe(recipe).active_provider(capability)
    assert (got.name if got else None) == provider
