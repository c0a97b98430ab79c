"""The bad-input catalogue: every public entry point fed malformed input.

Each case names the entry point, the bad input, the error class it must raise and a pattern
the message must match: the pattern is the *fix* the message gives (or, for the few cases
whose fix is to remove what is named, the exact thing named). Every case also checks that

* the error is raised by snnbridge itself (the last frame is snnbridge code, not a deep
  traceback from torch, pluggy or yaml);
* the model the case was given is unchanged (weights, buffers, training flags, requires_grad).

``python tests/test_bad_input.py`` prints the catalogue as a Markdown table with the real
messages (the table in docs/errors.md is made this way).
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import snnbridge
from snnbridge import (
    BackendError,
    CalibrationError,
    InputError,
    MissingRequirementError,
    ModelLoadError,
    NeuronSpec,
    OptionError,
    PluginConflictError,
    PluginError,
    PluginLoadError,
    RecipeParseError,
    SnnFileError,
    UnknownPluginError,
    UnsupportedModelError,
    hookimpl,
)
from snnbridge.loading import load_checkpoint, load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import zoo  # noqa: E402
from helpers.plugins import fixed_threshold, module_plugin, recorder  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()


DATA = [torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))]


@dataclass
class Env:
    """What a case may use: a fresh model (checked for mutation afterwards) and a temporary folder."""

    model: nn.Module
    tmp: Path

    def convert(self, recipe: Any = ("maxnorm",), **kw):
        kw.setdefault("calibration", DATA)
        kw.setdefault("progress", False)
        return snnbridge.convert(self.model, list(recipe), **kw)

    def snn(self, **kw):
        return self.convert(timesteps=4, **kw)

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path


@dataclass
class Case:
    id: str
    entry: str
    given: str
    call: Callable[[Env], Any]
    error: type
    fix: str


# -- plugin objects for the plugin cases ------------------------------------------------------------------------


class _Typo:
    name = "typo"

    @hookimpl
    def snnbridge_plugin_info(self):
        return snnbridge.PluginInfo(summary="x", provides=("threshold",))

    @hookimpl
    def snnbridge_estimate_treshold(self, ctx):  # misspelled on purpose
        return {}


class _BadArg:
    name = "badarg"

    @hookimpl
    def snnbridge_plugin_info(self):
        return snnbridge.PluginInfo(summary="x")

    @hookimpl
    def snnbridge_configure_neuron(self, site, spec, layer):  # 'layer' is not a hook argument
        return None


class _Raises:
    name = "raises"

    @hookimpl
    def snnbridge_plugin_info(self):
        return snnbridge.PluginInfo(summary="x", provides=("threshold",))

    @hookimpl
    def snnbridge_estimate_threshold(self, ctx):
        raise ValueError("statistics exploded")


class _WrongSpec:
    name = "wrongspec"

    @hookimpl
    def snnbridge_plugin_info(self):
        return snnbridge.PluginInfo(summary="x")

    @hookimpl
    def snnbridge_configure_neuron(self, site, spec):
        return {"threshold": 1.0}


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.LeakyReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.act(self.conv(x))).mean(dim=(2, 3)))


class _Dynamic(nn.Module):
    def forward(self, x):
        return torch.relu(x) if x.sum() > 0 else x


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        y = torch.relu(self.fc(x.flatten(1)))
        return y, y


def _nan_weights(env: Env):
    with torch.no_grad():
        bad = _net()
        bad[0].weight[0, 0, 0, 0] = float("nan")
    return snnbridge.convert(bad, ["maxnorm"], calibration=DATA, progress=False)


def _endless():
    while True:
        yield torch.rand(2, 3, 8, 8)


def _saved(env: Env, **kw) -> Path:
    return snnbridge.save(env.snn(), env.tmp / "snn.pt", **kw)


def _rewritten(env: Env, **changes) -> Path:
    payload = torch.load(_saved(env), weights_only=True)
    payload.update(changes)
    torch.save(payload, env.tmp / "changed.pt")
    return env.tmp / "changed.pt"


def _truncated(env: Env) -> Path:
    data = _saved(env).read_bytes()
    return env.write("cut.pt", data[: len(data) // 2])


def _grad_on_torch_backend(env: Env):
    snn = env.snn()
    for p in snn.parameters():
        p.requires_grad_(True)
    return snn(DATA[0])


def _short_table(env: Env):
    snn = env.snn()
    name = next(iter(snn.sites))
    snn.set_spec(name, snn.specs[name].replace(step_bias=torch.zeros(3)))
    return snn(DATA[0], timesteps=4)


def _gsr_without_input_grad(env: Env):
    x = DATA[0].clone()
    loss = snnbridge.training_loss([{"gsr": {"lam": 0.1}}])
    return loss(env.model(x), torch.zeros(4, dtype=torch.long), model=env.model, inputs=x)


CASES = [
    # recipes: snnbridge.build_recipe (and every function that takes a recipe)
    Case("unknown-plugin", "build_recipe", "['maxnrom']", lambda e: snnbridge.build_recipe(["maxnrom"]),
         UnknownPluginError, r"Did you mean 'maxnorm'"),
    Case("unknown-option", "build_recipe", "robustnorm: {percentil: 99}",
         lambda e: snnbridge.build_recipe([{"robustnorm": {"percentil": 99}}]), OptionError,
         r"Did you mean 'percentile'.*Its options are"),
    Case("option-wrong-type", "build_recipe", "percentile: 'high'",
         lambda e: snnbridge.build_recipe([{"robustnorm": {"percentile": "high"}}]), OptionError, r"must be a number"),
    Case("option-int-for-bool", "build_recipe", "channelwise: 1",
         lambda e: snnbridge.build_recipe([{"robustnorm": {"channelwise": 1}}]), OptionError, r"true or false"),
    Case("option-out-of-range", "build_recipe", "percentile: 0",
         lambda e: snnbridge.build_recipe([{"robustnorm": {"percentile": 0}}]), OptionError, r"0 < percentile <= 100"),
    Case("option-not-whole", "build_recipe", "max_samples: 2.5",
         lambda e: snnbridge.build_recipe([{"robustnorm": {"max_samples": 2.5}}]), OptionError, r"whole number"),
    Case("two-threshold-sources", "build_recipe", "['maxnorm', 'robustnorm']",
         lambda e: snnbridge.build_recipe(["maxnorm", "robustnorm"]), PluginConflictError, r"Keep one"),
    Case("missing-requirement", "build_recipe", "['maxnorm', 'cos'] (COS needs a QCFS ANN)",
         lambda e: snnbridge.build_recipe(["maxnorm", "cos"]), MissingRequirementError, r"Add one of: qcfs"),
    Case("wrong-order", "build_recipe", "['ftbc', 'maxnorm']", lambda e: snnbridge.build_recipe(["ftbc", "maxnorm"]),
         PluginConflictError, r"move 'maxnorm' before 'ftbc'"),
    Case("declared-conflict", "build_recipe", "two plugins declaring a conflict",
         lambda e: snnbridge.build_recipe(["maxnorm", module_plugin("halfv0", provides=("v0_base",),
                                                                    conflicts=("step_shift",)),
                                           module_plugin("shifter", provides=("step_shift",))]),
         PluginConflictError, r"'halfv0' cannot be combined with 'shifter'"),
    Case("after-rule", "build_recipe", "a plugin listed before the one it must follow",
         lambda e: snnbridge.build_recipe(["maxnorm", module_plugin("additive", after=("v0_base",)),
                                           module_plugin("halfv0", provides=("v0_base",))]),
         PluginConflictError, r"put 'halfv0' first"),
    Case("no-threshold-source", "build_recipe", "a recipe without a threshold estimator",
         lambda e: snnbridge.build_recipe([recorder("rec", [])]), MissingRequirementError, r"Add one of: .*maxnorm"),
    Case("empty-recipe", "build_recipe", "[]", lambda e: snnbridge.build_recipe([]), MissingRequirementError,
         r"e\.g\. \['maxnorm'\]|e\.g\. recipe"),
    Case("backend-in-recipe", "build_recipe", "['maxnorm', 'torch']",
         lambda e: snnbridge.build_recipe(["maxnorm", "torch"]), PluginConflictError, r"backend='torch'"),
    Case("duplicate-plugin", "build_recipe", "['maxnorm', 'maxnorm']",
         lambda e: snnbridge.build_recipe(["maxnorm", "maxnorm"]), PluginConflictError, r"list it once"),
    Case("entry-with-two-plugins", "build_recipe", "[{maxnorm: {}, robustnorm: {}}]",
         lambda e: snnbridge.build_recipe([{"maxnorm": {}, "robustnorm": {}}]), RecipeParseError,
         r"exactly one plugin"),
    Case("options-not-a-mapping", "build_recipe", "[{robustnorm: 99.9}]",
         lambda e: snnbridge.build_recipe([{"robustnorm": 99.9}]), RecipeParseError, r"must be a mapping"),
    Case("recipe-of-numbers", "build_recipe", "[1, 2, 3]", lambda e: snnbridge.build_recipe([1, 2, 3]),
         RecipeParseError, r"plugin names, \{name: options\} mappings"),
    Case("disabled-plugin", "build_recipe", "['maxnorm'] with disable=['maxnorm']",
         lambda e: snnbridge.build_recipe(["maxnorm"], disable=["maxnorm"]), UnknownPluginError, r"disabl"),
    # training losses: snnbridge.training_loss and the loss it returns
    Case("loss-conversion-method", "training_loss", "['maxnorm'] (a conversion method)",
         lambda e: snnbridge.training_loss(["maxnorm"]), PluginConflictError, r"recipe of snnbridge\.convert"),
    Case("loss-unknown-plugin", "training_loss", "['tte']", lambda e: snnbridge.training_loss(["tte"]),
         UnknownPluginError, r"Did you mean 'tet'"),
    Case("loss-gsr-without-lam", "training_loss", "['gsr'] (no lam)", lambda e: snnbridge.training_loss(["gsr"]),
         OptionError, r"\{'gsr': \{'lam': \.\.\.\}\}"),
    Case("loss-tet-decoded-outputs", "TrainingLoss.__call__", "tet on decoded [B, K] outputs",
         lambda e: snnbridge.training_loss(["tet"])(e.model(DATA[0]), torch.zeros(4, dtype=torch.long)), InputError,
         r"snn\.steps\(x\)"),
    Case("loss-batch-first-outputs", "TrainingLoss.__call__", "[B, T, K] outputs",
         lambda e: snnbridge.training_loss(["tet"])(torch.zeros(4, 2, 3), torch.zeros(4, dtype=torch.long)),
         InputError, r"outputs\.transpose\(0, 1\)"),
    Case("loss-one-hot-targets", "TrainingLoss.__call__", "one-hot float targets",
         lambda e: snnbridge.training_loss([])(torch.zeros(4, 2), torch.eye(2)[[0, 1, 0, 1]]), InputError,
         r"targets\.argmax\(1\)"),
    Case("loss-gsr-input-without-grad", "TrainingLoss.__call__", "gsr with inputs not requiring grad",
         _gsr_without_input_grad, InputError, r"x\.requires_grad_\(True\) before the forward pass"),
    # recipe and config files: snnbridge.load_config
    Case("yaml-does-not-parse", "load_config", "YAML with a bad indent",
         lambda e: snnbridge.load_config(e.write("r.yaml", "recipe:\n  - maxnorm\n   - robustnorm: {percentile: 99\n")),
         RecipeParseError, r"at line \d+.*indentation"),
    Case("yaml-python-tag", "load_config", "YAML carrying !!python/object",
         lambda e: snnbridge.load_config(e.write("r.yaml", "recipe: !!python/object/apply:os.system ['true']\n")),
         RecipeParseError, r"safe loading"),
    Case("toml-does-not-parse", "load_config", "TOML with an unclosed list",
         lambda e: snnbridge.load_config(e.write("r.toml", 'recipe = ["maxnorm"\ntimesteps = 4\n')),
         RecipeParseError, r"not valid TOML.*quoting and brackets"),
    Case("no-recipe-key", "load_config", "timesteps: 4 only",
         lambda e: snnbridge.load_config(e.write("r.yaml", "timesteps: 4\n")), RecipeParseError, r"'recipe' key"),
    Case("timesteps-not-a-number", "load_config", "timesteps: many",
         lambda e: snnbridge.load_config(e.write("r.yaml", "recipe: [maxnorm]\ntimesteps: many\n")),
         RecipeParseError, r"positive whole number"),
    Case("misspelled-top-level-key", "load_config", "timestep: 8",
         lambda e: snnbridge.load_config(e.write("r.yaml", "recipe: [maxnorm]\ntimestep: 8\n")),
         RecipeParseError, r"Did you mean 'timesteps'"),
    Case("file-is-a-list-of-numbers", "load_config", "[1, 2, 3]",
         lambda e: snnbridge.load_config(e.write("r.yaml", "[1, 2, 3]\n")), RecipeParseError,
         r"plugin names, \{name: options\} mappings"),
    Case("file-is-a-scalar", "load_config", "42", lambda e: snnbridge.load_config(e.write("r.yaml", "42\n")),
         RecipeParseError, r"mapping with a 'recipe' list"),
    Case("config-missing", "load_config", "a path that does not exist",
         lambda e: snnbridge.load_config(e.tmp / "missing.yaml"), RecipeParseError, r"give the path of a \.yaml"),
    Case("config-wrong-suffix", "load_config", "r.json",
         lambda e: snnbridge.load_config(e.write("r.json", "{}")), RecipeParseError, r"\.yaml, \.yml or \.toml"),
    Case("config-not-utf8", "load_config", "Latin-1 bytes",
         lambda e: snnbridge.load_config(e.write("r.yaml", "recipe: [maxnorm] # caf\xe9\n".encode("latin-1"))),
         RecipeParseError, r"UTF-8"),
    # plugins
    Case("misspelled-hook", "get_registry", "a hook named snnbridge_estimate_treshold",
         lambda e: snnbridge.get_registry([_Typo()]), PluginLoadError, r"unknown hook 'snnbridge_estimate_treshold'"),
    Case("hook-unknown-argument", "get_registry", "a hook taking 'layer'",
         lambda e: snnbridge.get_registry([_BadArg()]), PluginLoadError, r"layer"),
    Case("plugin-raises", "convert", "a threshold plugin raising ValueError",
         lambda e: e.convert([_Raises()]), PluginError, r"'raises'.*statistics exploded"),
    Case("plugin-wrong-sites", "convert", "thresholds for a site that does not exist",
         lambda e: e.convert([fixed_threshold("fixed", {"nosuchsite": 1.0})]), PluginError,
         r"one threshold per site"),
    Case("plugin-wrong-type", "convert", "configure_neuron returning a dict",
         lambda e: e.convert(["maxnorm", _WrongSpec()]), PluginError, r"must return a NeuronSpec"),
    # backends
    Case("unknown-backend", "convert", "backend='torhc'", lambda e: e.convert(backend="torhc"), UnknownPluginError,
         r"Did you mean 'torch'"),
    Case("unknown-backend-option", "convert", "backend_options={'kernel': 'x'} on torch",
         lambda e: e.convert(backend="torch", backend_options={"kernel": "x"}), OptionError, r"Its options are"),
    Case("method-as-backend", "convert", "backend='maxnorm'", lambda e: e.convert(backend="maxnorm"), BackendError,
         r"choose one of .*spikingjelly"),
    Case("backend-not-a-name", "convert", "backend=3", lambda e: e.convert(backend=3), BackendError,
         r"a name such as 'torch'"),
    Case("cupy-on-spikingjelly-2", "convert", "kernel='cupy' with SpikingJelly 2",
         lambda e: e.convert(backend="spikingjelly", backend_options={"kernel": "cupy"}), BackendError,
         r"kernel='auto'|0\.0\.0\.0\.14"),
    # models
    Case("unsupported-ops", "convert", "LeakyReLU, sigmoid",
         lambda e: snnbridge.convert(_Unsupported(), ["maxnorm"], calibration=DATA, progress=False),
         UnsupportedModelError,
         r"-> .*retrain with nn\.ReLU.*Nothing was converted"),
    Case("untraceable-model", "convert", "if x.sum() > 0 in forward",
         lambda e: snnbridge.convert(_Dynamic(), ["maxnorm"], calibration=DATA, progress=False),
         UnsupportedModelError, r"Move such logic out of forward"),
    Case("no-activation", "convert", "a model without ReLU",
         lambda e: snnbridge.convert(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), ["maxnorm"],
                                     calibration=DATA, progress=False), InputError, r"nn\.ReLU / F\.relu"),
    Case("tuple-output", "convert", "forward returns (y, y)",
         lambda e: snnbridge.convert(_TwoOutputs(), ["maxnorm"], calibration=DATA, progress=False),
         UnsupportedModelError, r"return one tensor"),
    Case("not-a-module", "convert", "a function instead of a model",
         lambda e: snnbridge.convert(lambda x: x, ["maxnorm"], calibration=DATA, progress=False), InputError,
         r"torch\.nn\.Module"),
    Case("nan-weights", "convert", "a NaN in the first conv's weights", _nan_weights, CalibrationError,
         r"site '1' produced NaN"),
    # calibration data
    Case("no-calibration", "convert", "a data-driven recipe without calibration",
         lambda e: e.convert(calibration=None), MissingRequirementError, r"pass calibration="),
    Case("empty-calibration", "convert", "calibration=[]", lambda e: e.convert(calibration=[]), CalibrationError,
         r"non-empty DataLoader or list"),
    Case("nan-calibration", "convert", "a NaN in a calibration batch",
         lambda e: e.convert(calibration=[torch.full((2, 3, 8, 8), float("nan"))]), CalibrationError,
         r"clean the data"),
    Case("calibration-not-tensors", "convert", "[['not', 'a', 'tensor']]",
         lambda e: e.convert(calibration=[["not", "a", "tensor"]]), CalibrationError, r"DataLoader or iterable"),
    Case("calibration-mixed-shapes", "convert", "batches of 8x8 and 10x10 images",
         lambda e: e.convert(calibration=[torch.rand(2, 3, 8, 8), torch.rand(2, 3, 10, 10)]), CalibrationError,
         r"same sample shape.*resize"),
    Case("calibration-endless", "convert", "an endless generator without calibration_batches",
         lambda e: e.convert(calibration=_endless()), CalibrationError, r"calibration_batches="),
    Case("calibration-endless-reiterable", "convert", "itertools.cycle-like endless iterable",
         lambda e: e.convert(calibration=_Endless()), CalibrationError, r"calibration_batches="),
    Case("calibration-integer-images", "convert", "uint8 images",
         lambda e: e.convert(calibration=[torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)]),
         CalibrationError, r"\.float\(\) / 255"),
    Case("calibration-wrong-channels", "convert", "grey-scale batches for an RGB model",
         lambda e: e.convert(calibration=[torch.rand(2, 1, 8, 8)]), CalibrationError, r"channel"),
    # conversion arguments
    Case("timesteps-zero", "convert", "timesteps=0", lambda e: e.convert(timesteps=0), InputError,
         r"positive whole number \(e\.g\. 32\)"),
    Case("timesteps-string", "convert", "timesteps='8'", lambda e: e.convert(timesteps="8"), InputError,
         r"positive whole number"),
    Case("calibration-batches-zero", "convert", "calibration_batches=0",
         lambda e: e.convert(calibration_batches=0), InputError, r"calibration_batches must be"),
    # running a converted SNN
    Case("input-wrong-size", "SpikingModel.__call__", "9x9 images for an 8x8 model",
         lambda e: e.snn()(torch.rand(2, 3, 9, 9)), InputError, r"resize the inputs"),
    Case("input-single-sample", "SpikingModel.__call__", "one [3, 8, 8] image",
         lambda e: e.snn()(torch.rand(3, 8, 8)), InputError, r"x\.unsqueeze\(0\)"),
    Case("input-sequence-without-flag", "SpikingModel.__call__", "a [T, B, 3, 8, 8] sequence",
         lambda e: e.snn()(torch.rand(4, 2, 3, 8, 8)), InputError, r"time_major=True"),
    Case("input-wrong-channels", "SpikingModel.__call__", "grey-scale input",
         lambda e: e.snn()(torch.rand(2, 1, 8, 8)), InputError, r"grey-scale vs RGB"),
    Case("input-nan", "SpikingModel.__call__", "an Inf in the input",
         lambda e: e.snn()(torch.full((2, 3, 8, 8), float("inf"))), InputError, r"torch\.nan_to_num"),
    Case("input-not-a-tensor", "SpikingModel.__call__", "a list", lambda e: e.snn()([1, 2, 3]), InputError,
         r"torch\.Tensor"),
    Case("input-integer", "SpikingModel.__call__", "uint8 images",
         lambda e: e.snn()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), InputError, r"x\.float\(\)"),
    Case("run-timesteps-zero", "SpikingModel.__call__", "snn(x, timesteps=0)",
         lambda e: e.snn()(DATA[0], timesteps=0), InputError, r">= 1"),
    Case("run-until-unknown-site", "SpikingModel.run", "until='nosuchsite'",
         lambda e: e.snn().run(DATA[0], until="nosuchsite"), InputError, r"its sites are"),
    Case("sequence-timesteps-mismatch", "SpikingModel.__call__", "a 4-step sequence with timesteps=3",
         lambda e: e.snn()(torch.rand(4, 2, 3, 8, 8), timesteps=3, time_major=True), InputError,
         r"leave timesteps out"),
    Case("backward-on-torch-backend", "SpikingModel.__call__", "parameters requiring grad on backend torch",
         _grad_on_torch_backend, BackendError,
         r"snn\.set_surrogate\(snnbridge\.surrogate\('localzo'\)\).*torch\.no_grad\(\)"
         r".*backend='spikingjelly' or 'snntorch'"),
    Case("bias-table-too-short", "SpikingModel.__call__", "a 3-step bias table run for 4 steps", _short_table,
         InputError, r"can run at most T = 3.*convert again with timesteps=4"),
    Case("record-unknown-keep", "SpikingModel.record", "keep='spkes'",
         lambda e: e.snn().record(keep="spkes"), InputError, r"Did you mean 'spikes'"),
    # neuron specs and simulate
    Case("threshold-zero", "NeuronSpec", "threshold=0.0", lambda e: NeuronSpec(threshold=0.0), InputError,
         r"threshold estimator's statistics"),
    Case("threshold-negative-channel", "NeuronSpec", "threshold=[1, -1]",
         lambda e: NeuronSpec(threshold=torch.tensor([1.0, -1.0])), InputError, r"clamp dead channels"),
    Case("threshold-2d", "NeuronSpec", "a [2, 2] threshold", lambda e: NeuronSpec(threshold=torch.ones(2, 2)),
         InputError, r"one value per channel"),
    Case("v0-wrong-shape", "NeuronSpec.v0_tensor", "v0 [3, 5] for a [2, 4, 4] state",
         lambda e: NeuronSpec(threshold=1.0, v0=torch.zeros(3, 5)).v0_tensor(torch.zeros(2, 4, 4)), InputError,
         r"give a float, \[C\] or \[C, \.\.\.\]"),
    Case("simulate-1d", "simulate", "a 1-D input", lambda e: snnbridge.simulate(NeuronSpec(threshold=1.0),
                                                                                  torch.zeros(4)),
         InputError, r"\[T, B, \.\.\.\]"),
    # saved SNNs
    Case("load-missing-file", "load", "a path that does not exist", lambda e: snnbridge.load(e.tmp / "none.pt"),
         SnnFileError, r"snnbridge\.save\(snn, path\)"),
    Case("load-truncated", "load", "half a file", lambda e: snnbridge.load(_truncated(e), model=_net),
         SnnFileError, r"Save it again"),
    Case("load-pickled-untrusted", "load", "a file saved with pickled=True",
         lambda e: snnbridge.load(_saved(e, pickled=True)), SnnFileError, r"trusted=True"),
    Case("load-newer-format", "load", "format_version 99",
         lambda e: snnbridge.load(_rewritten(e, format_version=99), model=_net), SnnFileError,
         r"pip install -U snnbridge"),
    Case("load-wrong-architecture", "load", "a narrower model",
         lambda e: snnbridge.load(_saved(e), model=lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(),
                                                                          nn.Linear(2 * 6 * 6, 2))),
         SnnFileError, r"Pass the same architecture"),
    Case("load-no-architecture", "load", "no model= and none recorded", lambda e: snnbridge.load(_saved(e)),
         SnnFileError, r"model=make_model\(\)"),
    Case("load-ann-checkpoint", "load", "an ANN state_dict",
         lambda e: (torch.save(_net().state_dict(), e.tmp / "ann.pt"), snnbridge.load(e.tmp / "ann.pt", model=_net)),
         SnnFileError, r"convert it first"),
    Case("save-not-an-snn", "save", "the ANN", lambda e: snnbridge.save(_net(), e.tmp / "x.pt"), SnnFileError,
         r"torch\.save\(module\.state_dict\(\)"),
    Case("save-unsafe-metadata", "save", "metadata={'obj': object()}",
         lambda e: snnbridge.save(e.snn(), e.tmp / "x.pt", metadata={"obj": object()}), SnnFileError,
         r"pickled=True"),
    # building and loading ANNs (command line --model / --checkpoint)
    Case("factory-no-colon", "load_model", "'nocolon'", lambda e: load_model("nocolon"), ModelLoadError,
         r"MODULE:FACTORY \(e\.g\."),
    Case("factory-missing-module", "load_model", "'no_such_module_x:f'", lambda e: load_model("no_such_module_x:f"),
         ModelLoadError, r"PYTHONPATH"),
    Case("factory-needs-arguments", "load_model", "a factory with a required argument",
         lambda e: load_model("helpers.zoo:relu_head"), ModelLoadError, r"wrap it in a small function"),
    Case("factory-not-callable", "load_model", "a module attribute that is an int",
         lambda e: load_model("helpers.zoo:NOT_A_FACTORY"), ModelLoadError, r"not a function returning a model"),
    Case("checkpoint-mismatch", "load_checkpoint", "weights of a wider model",
         lambda e: (torch.save(zoo.make_wide_net().state_dict(), e.tmp / "w.pt"),
                    load_checkpoint(zoo.make_net(), e.tmp / "w.pt")), ModelLoadError, r"same width, depth"),
    Case("checkpoint-pickled-object", "load_checkpoint", "a checkpoint holding a pickled module",
         lambda e: (torch.save({"model": _net()}, e.tmp / "p.pt"), load_checkpoint(_net(), e.tmp / "p.pt")),
         ModelLoadError, r"trust=True"),
    # surrogate gradients: snnbridge.surrogate and SpikingModel.set_surrogate
    Case("surrogate-unknown-option", "surrogate", "localzo: {detla: 0.1}",
         lambda e: snnbridge.surrogate({"localzo": {"detla": 0.1}}), OptionError, r"Did you mean 'delta'"),
    Case("surrogate-two", "surrogate", "['localzo', 'sg']", lambda e: snnbridge.surrogate(["localzo", "sg"]),
         PluginConflictError, r"Keep one"),
    Case("surrogate-none", "surrogate", "[]", lambda e: snnbridge.surrogate([]), MissingRequirementError,
         r"e\.g\. 'localzo'"),
    Case("surrogate-conversion-plugin", "surrogate", "['maxnorm']", lambda e: snnbridge.surrogate(["maxnorm"]),
         PluginConflictError, r"belongs in the recipe of snnbridge\.convert"),
    Case("surrogate-in-convert-recipe", "convert", "['maxnorm', 'localzo']",
         lambda e: e.convert(["maxnorm", "localzo"]), PluginConflictError,
         r"convert without it.*snn\.set_surrogate"),
    Case("set-surrogate-other-framework", "SpikingModel.set_surrogate", "an snnTorch surrogate on spikingjelly",
         lambda e: e.snn(backend="spikingjelly").set_surrogate(snnbridge.surrogate("sg", framework="snntorch")),
         BackendError, r"framework='spikingjelly'"),
    Case("set-surrogate-not-a-spike-function", "SpikingModel.set_surrogate", "a callable returning 2x",
         lambda e: e.snn(backend="snntorch").set_surrogate(lambda v: 2 * v), BackendError,
         r"snntorch\.surrogate\.\*\) or a snnbridge\.Surrogate"),
    Case("set-surrogate-misspelled-recipe", "SpikingModel.set_surrogate", "'localz'",
         lambda e: e.snn().set_surrogate("localz"), UnknownPluginError, r"Did you mean 'localzo'"),
    Case("loss-in-convert-recipe", "convert", "['maxnorm', 'tet']", lambda e: e.convert(["maxnorm", "tet"]),
         PluginConflictError, r"convert without it.*snnbridge\.training_loss\(\['tet'\]\)"),
    # robustness evaluation: snnbridge.robustness
    Case("attack-negative-eps", "fgsm", "eps = -0.1",
         lambda e: snnbridge.fgsm(e.model, DATA[0], torch.zeros(4, dtype=torch.long), -0.1), InputError,
         r"eps"),
    Case("attack-zero-steps", "pgd", "steps = 0",
         lambda e: snnbridge.pgd(e.model, DATA[0], torch.zeros(4, dtype=torch.long), 0.1, steps=0), InputError,
         r"steps"),
    Case("robustness-surrogates-on-ann", "evaluate_robustness", "surrogates for a model without set_surrogate",
         lambda e: snnbridge.evaluate_robustness(e.model, (DATA[0], torch.zeros(4, dtype=torch.long)),
                                                 surrogates=["localzo"], progress=False), InputError,
         r"set_surrogate"),
    # session 17: option keywords, ltb auto, runs, backends, tune, distributed helpers
    Case("option-keyword-typo", "build_recipe", "ltb iterations: 'Auto'",
         lambda e: snnbridge.build_recipe([{"ltb": {"iterations": "Auto"}}]), OptionError, r"Did you mean 'auto'"),
    Case("ltb-auto-one-image", "convert", "['ltb'] with a single calibration image",
         lambda e: e.convert(["ltb"], calibration=[DATA[0][:1]]), InputError, r"give more images or set iterations"),
    Case("before-fire-not-callable", "SpikingModel.run", "before_fire = 3",
         lambda e: e.snn().run(DATA[0], before_fire=3), InputError, r"before_fire must be a function"),
    Case("before-fire-wrong-shape", "SpikingModel.run", "before_fire returns a slice",
         lambda e: e.snn().run(DATA[0], before_fire=lambda site, seq: seq[:1]), InputError,
         r"return None or a tensor shaped"),
    Case("to-backend-unknown", "SpikingModel.to_backend", "'spikingjely'",
         lambda e: e.snn().to_backend("spikingjely"), UnknownPluginError, r"Did you mean 'spikingjelly'"),
    Case("tune-holdout-too-large", "tune", "holdout_batches = number of batches",
         lambda e: snnbridge.tune(e.model, DATA, holdout_batches=len(DATA), progress=False), InputError,
         r"holdout"),
    Case("shard-drop-last", "distributed.shard", "drop_last=True",
         lambda e: snnbridge.distributed.shard(torch.utils.data.TensorDataset(DATA[0]), 2, drop_last=True),
         InputError, r"drop_last"),
]


class _Endless:
    """Re-iterable and endless (like a DataLoader over an infinite sampler)."""

    def __iter__(self):
        return (torch.rand(2, 3, 8, 8) for _ in itertools.count())


def _fingerprint(model: nn.Module):
    return ([(k, v.clone()) for k, v in model.state_dict().items()],
            [(n, p.requires_grad) for n, p in model.named_parameters()], [m.training for m in model.modules()])


def _unchanged(before, after) -> bool:
    (sa, ga, ta), (sb, gb, tb) = before, after
    same = all(ka == kb and torch.equal(va, vb) if not torch.isnan(va).any() else ka == kb
               for (ka, va), (kb, vb) in zip(sa, sb))
    return same and len(sa) == len(sb) and ga == gb and ta == tb


SNNBRIDGE_CODE = ("/snnbridge/", "/plugins/", "/adapters/")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = Env(model=_net(), tmp=tmp_path)
    before = _fingerprint(env.model)
    with pytest.raises(case.error) as info:
        case.call(env)
    message = str(info.value)
    assert re.search(case.fix, message, re.S), f"{case.id}: {message!r} does not name the fix /{case.fix}/"
    last = str(info.traceback[-1].path)
    assert any(part in last for part in SNNBRIDGE_CODE), f"{case.id}: raised from {last}, not by snnbridge"
    assert _unchanged(before, _fingerprint(env.model)), f"{case.id}: the model was changed"


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.entry, c.given) for c in CASES}) == len(CASES)


def markdown_table() -> str:
    """The catalogue with each case's real message (run ``python tests/test_bad_input.py``)."""
    import tempfile

    rows = ["| input | entry point | error | message (excerpt) |", "|---|---|---|---|"]
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                case.call(Env(model=_net(), tmp=Path(tmp)))
                message = "(no error)"
            except Exception as exc:  # noqa: BLE001 - the table shows whatever happens
                message = str(exc).replace("\n", " ").replace(str(Path(tmp).resolve()), "<tmp>").replace(tmp, "<tmp>")
        excerpt = message if len(message) <= 150 else message[:147] + "..."
        rows.append(f"| {case.given} | `{case.entry}` | `{case.error.__name__}` | "
                    f"{excerpt.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    print(markdown_table())
