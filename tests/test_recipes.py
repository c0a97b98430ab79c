"""Recipes from Python, YAML and TOML; options defaults; stage calls follow recipe order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from helpers.plugins import recorder


def test_python_yaml_toml_give_the_same_recipe(tmp_path):
    py = snnbridge.build_recipe(["maxnorm"])
    assert py.to_list() == [{"maxnorm": {"channelwise": False, "momentum": None}}]
    (tmp_path / "r.yaml").write_text(
        "recipe:\n  - robustnorm: {percentile: 99.99, channelwise: true}\nbackend: {name: torch}\ntimesteps: 16\n")
    (tmp_path / "r.toml").write_text(
        'timesteps = 16\nrecipe = [{robustnorm = {percentile = 99.99, channelwise = true}}]\n'
        '[backend]\nname = "torch"\n')
    configs = [snnbridge.load_config(tmp_path / f) for f in ("r.yaml", "r.toml")]
    recipes = [snnbridge.build_recipe(c.recipe).to_list() for c in configs]
    assert recipes[0] == recipes[1] == snnbridge.build_recipe(
        [{"robustnorm": {"percentile": 99.99, "channelwise": True}}]).to_list()
    assert recipes[0][0]["robustnorm"]["nonzero"] is False  # default filled in
    assert all(c.timesteps == 16 and c.backend == "torch" for c in configs)


def test_config_backend_options_and_string_backend(tmp_path):
    (tmp_path / "a.yaml").write_text("recipe: [maxnorm]\nbackend: {name: spikingjelly, kernel: auto}\n")
    cfg = snnbridge.load_config(tmp_path / "a.yaml")
    assert cfg.backend == "spikingjelly" and cfg.backend_options == {"kernel": "auto"} and cfg.timesteps == 32
    (tmp_path / "b.yaml").write_text("recipe: maxnorm\nbackend: snntorch\ndescription: kept\n")
    cfg = snnbridge.load_config(tmp_path / "b.yaml")
    assert cfg.recipe == ["maxnorm"] and cfg.backend == "snntorch" and cfg.description == "kept"
    (tmp_path / "c.yaml").write_text("recipe: maxnorm\ntimestep: 8\n")  # misspelled key: refused before any work
    with pytest.raises(snnbridge.RecipeParseError, match="unknown key 'timestep'.*Did you mean 'timesteps'"):
        snnbridge.load_config(tmp_path / "c.yaml")


def test_tuple_entries_and_int_to_float_coercion():
    r = snnbridge.build_recipe([("robustnorm", {"percentile": 99})])
    assert r.entries[0].options["percentile"] == 99.0 and isinstance(r.entries[0].options["percentile"], float)


def test_stage_calls_follow_recipe_order_not_registration_order():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    data = [torch.rand(8, 4)]
    for order in (("a", "b"), ("b", "a")):
        log: list = []
        plugins = {n: recorder(n, log) for n in ("a", "b")}
        recipe = ["maxnorm"] + [plugins[n] for n in order]
        snnbridge.convert(net, recipe, calibration=data, timesteps=2, progress=False)
        configure = [entry for entry in log if entry[1] != "correct"]
        correct = [entry[0] for entry in log if entry[1] == "correct"]
        # each stage runs plugin by plugin in recipe order, over every site in topological order
        assert configure == [(order[0], "1"), (order[0], "3"), (order[1], "1"), (order[1], "3")]
        assert correct == list(order)


def test_installed_plugins_are_registered_through_entry_points():
    import importlib.metadata as md

    eps = {ep.name: ep.value for ep in md.entry_points(group="snnbridge")}
    assert eps["maxnorm"] == "snnbridge.plugins.maxnorm"
    assert eps["robustnorm"] == "snnbridge.plugins.robustnorm"
    assert eps["torch"] == "snnbridge.adapters.torch_ref"
    reg = snnbridge.get_registry()
    assert {"maxnorm", "robustnorm"} <= set(reg.names("method"))
    assert "torch" in reg.names("backend")
    assert reg.distribution("maxnorm")[0] == "snnbridge"
