"""Every bad input raises its snnbridge error class with a message that names the fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from snnbridge import (CalibrationError, InputError, MissingRequirementError, OptionError, PluginConflictError,
                       PluginLoadError, RecipeParseError, UnknownPluginError, UnsupportedModelError, hookimpl)
from helpers.plugins import module_plugin, recorder


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()


DATA = [torch.rand(4, 3, 8, 8)]


# -- recipes ---------------------------------------------------------------------------------------------


def test_unknown_plugin_suggests_close_names():
    with pytest.raises(UnknownPluginError, match=r"'maxnrom'.*Did you mean 'maxnorm'"):
        snnbridge.build_recipe(["maxnrom"])


def test_unknown_option_suggests_and_lists_options():
    with pytest.raises(OptionError, match=r"no option 'percentil'.*Did you mean 'percentile'.*channelwise"):
        snnbridge.build_recipe([{"robustnorm": {"percentil": 99}}])


@pytest.mark.parametrize("opts,pattern", [
    ({"percentile": "high"}, r"'percentile' of plugin 'robustnorm' must be a number"),
    ({"channelwise": 1}, r"'channelwise'.*true or false"),
    ({"percentile": 0}, r"out of range.*0 < percentile <= 100"),
    ({"percentile": 101.0}, r"out of range"),
    ({"max_samples": 2.5}, r"whole number"),
])
def test_ill_typed_or_out_of_range_options(opts, pattern):
    with pytest.raises(OptionError, match=pattern):
        snnbridge.build_recipe([{"robustnorm": opts}])


def test_two_threshold_estimators_conflict_naming_both():
    with pytest.raises(PluginConflictError, match=r"'maxnorm' and 'robustnorm' both provide 'threshold'.*Keep one"):
        snnbridge.build_recipe(["maxnorm", "robustnorm"])


def test_requirement_missing_and_wrong_order():
    needs = module_plugin("needsq", requires=("quantized_ann",))
    gives = module_plugin("givesq", provides=("quantized_ann",))
    with pytest.raises(MissingRequirementError, match=r"'needsq' needs 'quantized_ann'.*Add one of: .*givesq"):
        snnbridge.build_recipe(["maxnorm", needs], registry=snnbridge.get_registry([needs, gives]))
    with pytest.raises(PluginConflictError, match=r"move 'givesq' before 'needsq'"):
        snnbridge.build_recipe(["maxnorm", needs, gives])
    assert snnbridge.build_recipe(["maxnorm", gives, needs]).names == ["maxnorm", "givesq", "needsq"]


def test_declared_conflict_and_after_rules():
    half = module_plugin("halfv0", provides=("v0_base",), conflicts=("step_shift",))
    shift = module_plugin("shifter", provides=("step_shift",))
    with pytest.raises(PluginConflictError, match=r"'halfv0' cannot be combined with 'shifter'"):
        snnbridge.build_recipe(["maxnorm", half, shift])
    later = module_plugin("additive", after=("v0_base",))
    with pytest.raises(PluginConflictError, match=r"'additive' must come after 'halfv0'"):
        snnbridge.build_recipe(["maxnorm", later, half])


def test_no_threshold_source_and_empty_recipe():
    log = []
    with pytest.raises(MissingRequirementError, match=r"no threshold source.*maxnorm"):
        snnbridge.build_recipe([recorder("rec", log)])
    with pytest.raises(MissingRequirementError, match="empty"):
        snnbridge.build_recipe([])


def test_backend_in_recipe_and_duplicates():
    with pytest.raises(PluginConflictError, match=r"backend.*backend='torch'"):
        snnbridge.build_recipe(["maxnorm", "torch"])
    with pytest.raises(PluginConflictError, match="appears twice"):
        snnbridge.build_recipe(["maxnorm", "maxnorm"])


def test_malformed_recipe_entries():
    with pytest.raises(RecipeParseError, match="exactly one plugin"):
        snnbridge.build_recipe([{"maxnorm": {}, "robustnorm": {}}])
    with pytest.raises(RecipeParseError, match="must be a mapping"):
        snnbridge.build_recipe([{"robustnorm": 99.9}])


def test_recipe_files_that_do_not_parse(tmp_path):
    bad_yaml = tmp_path / "r.yaml"
    bad_yaml.write_text("recipe:\n  - maxnorm\n   - robustnorm: {percentile: 99\n")
    with pytest.raises(RecipeParseError, match=r"not valid YAML at line \d+"):
        snnbridge.load_config(bad_yaml)
    bad_toml = tmp_path / "r.toml"
    bad_toml.write_text("recipe = [\"maxnorm\"\ntimesteps = 4\n")
    with pytest.raises(RecipeParseError, match="not valid TOML"):
        snnbridge.load_config(bad_toml)
    no_key = tmp_path / "n.yaml"
    no_key.write_text("timesteps: 4\n")
    with pytest.raises(RecipeParseError, match="no 'recipe' key"):
        snnbridge.load_config(no_key)
    wrong_t = tmp_path / "t.yaml"
    wrong_t.write_text("recipe: [maxnorm]\ntimesteps: many\n")
    with pytest.raises(RecipeParseError, match="positive whole number"):
        snnbridge.load_config(wrong_t)
    with pytest.raises(RecipeParseError, match="does not exist"):
        snnbridge.load_config(tmp_path / "missing.yaml")
    other = tmp_path / "r.json"
    other.write_text("{}")
    with pytest.raises(RecipeParseError, match=r"\.yaml, \.yml or \.toml"):
        snnbridge.load_config(other)


# -- plugins ---------------------------------------------------------------------------------------------


def test_misspelled_hook_is_caught_by_check_pending():
    class Typo:
        name = "typo"

        @hookimpl
        def snnbridge_plugin_info(self):
            return snnbridge.PluginInfo(summary="x", provides=("threshold",))

        @hookimpl
        def snnbridge_estimate_treshold(self, ctx):  # misspelled on purpose
            return {}

    with pytest.raises(PluginLoadError, match="unknown hook 'snnbridge_estimate_treshold'"):
        snnbridge.get_registry([Typo()])


def test_hook_with_unknown_argument_is_rejected():
    class BadArg:
        name = "badarg"

        @hookimpl
        def snnbridge_plugin_info(self):
            return snnbridge.PluginInfo(summary="x")

        @hookimpl
        def snnbridge_configure_neuron(self, site, spec, layer):  # 'layer' is not in the spec
            return None

    with pytest.raises(PluginLoadError, match="layer"):
        snnbridge.get_registry([BadArg()])


def test_unknown_backend_and_backend_options():
    with pytest.raises(UnknownPluginError, match=r"backend 'torhc'.*Did you mean 'torch'"):
        snnbridge.convert(_net(), ["maxnorm"], calibration=DATA, backend="torhc")
    with pytest.raises(OptionError, match="plugin 'torch' has no option 'kernel'"):
        snnbridge.convert(_net(), ["maxnorm"], calibration=DATA, backend="torch", backend_options={"kernel": "x"})


# -- models ---------------------------------------------------------------------------------------------


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.LeakyReLU()
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a = self.act(self.conv(x))
        b = torch.sigmoid(a) * self.gelu(a)  # two unsupported activations and a product of two signals
        c = b.mean(dim=(2, 3))
        c = c - c.mean(0)  # mixes samples (batch dimension)
        return self.fc(c)


def test_unsupported_model_lists_every_offending_node():
    with pytest.raises(UnsupportedModelError) as exc:
        snnbridge.convert(Unsupported().eval(), ["maxnorm"], calibration=DATA)
    msg = str(exc.value)
    assert "5 operation(s)" in msg
    for needle in ("LeakyReLU", "GELU", "sigmoid", "mul", "dimension 0", "->", "Nothing was converted"):
        assert needle in msg, needle


def test_untraceable_model_explains():
    class Dynamic(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return torch.relu(x)
            return x

    with pytest.raises(UnsupportedModelError, match="data-dependent"):
        snnbridge.convert(Dynamic(), ["maxnorm"], calibration=DATA)


def test_model_without_activation():
    with pytest.raises(InputError, match="no activation"):
        snnbridge.convert(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), ["maxnorm"], calibration=DATA)


def test_tuple_output_is_rejected():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = torch.relu(self.fc(x))
            return y, y

    with pytest.raises(UnsupportedModelError, match="single output tensor"):
        snnbridge.convert(Two(), ["maxnorm"], calibration=[torch.rand(2, 4)])


# -- data and inputs ---------------------------------------------------------------------------------------


def test_calibration_errors():
    with pytest.raises(MissingRequirementError, match=r"'maxnorm' needs calibration data"):
        snnbridge.convert(_net(), ["maxnorm"])
    with pytest.raises(CalibrationError, match="no batches"):
        snnbridge.convert(_net(), ["maxnorm"], calibration=[])
    bad = torch.rand(4, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="NaN"):
        snnbridge.convert(_net(), ["maxnorm"], calibration=[bad])
    with pytest.raises(CalibrationError, match="DataLoader or iterable"):
        snnbridge.convert(_net(), ["maxnorm"], calibration=[["not", "a", "tensor"]])


def test_nan_weights_are_reported_by_site():
    net = _net()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=r"site '1' produced NaN"):
        snnbridge.convert(net, ["maxnorm"], calibration=DATA)


def test_runtime_input_errors():
    snn = snnbridge.convert(_net(), ["maxnorm"], calibration=DATA, timesteps=4, progress=False)
    with pytest.raises(InputError, match=r"does not match the shape.*\[B, 3, 8, 8\]"):
        snn(torch.rand(2, 3, 9, 9))
    with pytest.raises(InputError, match=r"unsqueeze\(0\)"):
        snn(torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="static batch"):
        snn(torch.rand(4, 2, 3, 8, 8))  # a [T, B, ...] sequence
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="1 NaN/Inf"):
        snn(x)
    with pytest.raises(InputError, match="torch.Tensor"):
        snn([1, 2, 3])
    with pytest.raises(InputError, match="timesteps must be a positive whole number"):
        snnbridge.convert(_net(), ["maxnorm"], calibration=DATA, timesteps=0)


def test_neuron_spec_validation():
    with pytest.raises(InputError, match="finite positive"):
        snnbridge.NeuronSpec(threshold=0.0)
    with pytest.raises(InputError, match="not finite and positive"):
        snnbridge.NeuronSpec(threshold=torch.tensor([1.0, -1.0]))
    with pytest.raises(InputError, match="1-D per-channel"):
        snnbridge.NeuronSpec(threshold=torch.ones(2, 2))
    spec = snnbridge.NeuronSpec(threshold=1.0, v0=torch.zeros(3, 5))
    with pytest.raises(InputError, match="does not fit a state"):
        spec.v0_tensor(torch.zeros(2, 4, 4))
    with pytest.raises(InputError, match=r"\[T, B, \.\.\.\]"):
        snnbridge.simulate(snnbridge.NeuronSpec(threshold=1.0), torch.zeros(4))
