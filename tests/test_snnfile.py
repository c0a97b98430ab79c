"""The safe SNN file: weights-only loading, bit-for-bit rebuilds from the architecture, and clear errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import snnbridge
from helpers import zoo
from helpers.plugins import WarmupShift
from snnbridge import SnnFileError

BACKENDS = ["torch", "spikingjelly", "snntorch"]


def _no_bias_net() -> nn.Module:
    """A conv without bias and without BN: SNN Calibration's bias correction has to create the bias."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3))


RECIPES = {
    "maxnorm": ["maxnorm"],
    "robustnorm-cw+ftbc": [{"robustnorm": {"channelwise": True}}, {"ftbc": {"iterations": 1}}],
    "ltb": ["ltb"],
    "calibration-light": [{"snn_calibration": {"preset": "light"}}],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_round_trip_is_bit_identical_and_weights_only(backend, recipe, small_resnet, calib_batches, test_input,
                                                      tmp_path):
    snn = snnbridge.convert(small_resnet, RECIPES[recipe], calibration=calib_batches, backend=backend, timesteps=4,
                            progress=False)
    path = snnbridge.save(snn, tmp_path / "snn.pt", metadata={"mean": [0.5, 0.5, 0.5]})
    raw = torch.load(path, weights_only=True)  # the point of the format: no code runs when reading it
    assert raw["format"] == "snnbridge-snn" and raw["backend"] == backend
    # rebuilt from a freshly initialised architecture: every weight comes from the file
    loaded, info = snnbridge.load(path, model=zoo.SmallResNet, with_info=True)
    assert torch.equal(loaded.sweep(test_input), snn.sweep(test_input))
    assert torch.equal(loaded(test_input), snn(test_input))
    assert info["metadata"] == {"mean": [0.5, 0.5, 0.5]} and info["recipe"] == snn.recipe
    assert loaded.decode_window == snn.decode_window and loaded.steps_run == snn.steps_run
    for name, spec in snn.specs.items():
        other = loaded.specs[name]
        for field in ("threshold", "v0", "step_bias"):
            a, b = getattr(spec, field), getattr(other, field)
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), (name, field)


def test_network_warmup_corrections_and_qcfs_stack_survive(calib_batches, test_input, tmp_path):
    ann = snnbridge.prepare(zoo.small_resnet(), ["qcfs"])
    snn = snnbridge.convert(ann, ["qcfs", "cos", "srp"], calibration=calib_batches, timesteps=4, progress=False)
    assert snn.warmup > 0 and all(site.corrections for site in snn.sites.values())
    path = snnbridge.save(snn, tmp_path / "qcfs.pt")
    # the plain architecture is enough: the file's recipe prepares it the way the converted model was
    for model in (zoo.small_resnet, ann):
        loaded = snnbridge.load(path, model=model)
        assert [type(c) for c in loaded.sites[next(iter(loaded.sites))].corrections] == \
            [type(c) for c in snn.sites[next(iter(snn.sites))].corrections]
        assert loaded.steps_run == snn.steps_run
        assert torch.equal(loaded.sweep(test_input), snn.sweep(test_input))


def test_bias_created_by_a_correction_is_restored(calib_batches, test_input, tmp_path):
    snn = snnbridge.convert(_no_bias_net(), [{"snn_calibration": {"preset": "light"}}], calibration=calib_batches,
                            timesteps=4, progress=False)
    assert snn.graph_module.get_submodule("0").bias is not None  # the correction went into a new conv bias
    loaded = snnbridge.load(snnbridge.save(snn, tmp_path / "c.pt"), model=_no_bias_net)
    assert torch.equal(loaded(test_input), snn(test_input))


def test_runtime_corrections_and_settings_are_kept(small_resnet, calib_batches, test_input, tmp_path):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=4, progress=False)
    for site in snn.sites.values():
        site.corrections.append(WarmupShift())
    snn.time_chunk, snn.forward_on_means = 3, False
    loaded, info = snnbridge.load(snnbridge.save(snn, tmp_path / "w.pt"), model=zoo.small_resnet, with_info=True)
    assert info["warmup"] == 2 and loaded.steps_run == snn.steps_run == 6
    assert (loaded.time_chunk, loaded.forward_on_means) == (3, False)
    assert torch.equal(loaded.sweep(test_input), snn.sweep(test_input))


def test_architecture_reference_and_model_forms(small_resnet, calib_batches, test_input, tmp_path):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=3, progress=False)
    with_ref = snnbridge.save(snn, tmp_path / "ref.pt", architecture="helpers.zoo:small_resnet")
    expected = snn(test_input)
    assert torch.equal(snnbridge.load(with_ref)(test_input), expected)  # the file says how to build the ANN
    assert torch.equal(snnbridge.load(with_ref, model="helpers.zoo:SmallResNet")(test_input), expected)
    module = zoo.SmallResNet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert torch.equal(snnbridge.load(with_ref, model=module)(test_input), expected)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # the given module is untouched
    bare = snnbridge.save(snn, tmp_path / "bare.pt")
    with pytest.raises(SnnFileError, match=r"SmallResNet.*model=make_model\(\)"):
        snnbridge.load(bare)
    with pytest.raises(SnnFileError, match="architecture must be a 'module:factory'"):
        snnbridge.save(snn, tmp_path / "x.pt", architecture=zoo.small_resnet)


def test_file_holds_weights_not_run_state(small_resnet, calib_batches, tmp_path):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=8, progress=False)
    snn(torch.rand(64, 3, 8, 8))  # a large run leaves membrane state in the sites and neurons
    path = snnbridge.save(snn, tmp_path / "s.pt")
    weights = sum(t.numel() * t.element_size() for t in snn.state_dict().values())
    assert os.path.getsize(path) < weights + 64 * 1024
    raw = torch.load(path, weights_only=True)
    assert "snn" not in raw and set(raw["state_dict"]) == set(snn.state_dict())


def test_pickled_form_is_an_explicit_opt_in(small_resnet, calib_batches, test_input, tmp_path):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=3, progress=False)
    path = snnbridge.save(snn, tmp_path / "p.pt", pickled=True)
    with pytest.raises(SnnFileError, match="trusted=True"):
        snnbridge.load(path)
    assert torch.equal(snnbridge.load(path, trusted=True)(test_input), snn(test_input))
    old = tmp_path / "old.pt"  # the format-1 layout of earlier versions: a pickled module in a dict
    torch.save({"format": "snnbridge-snn", "format_version": 1, "snn": snn}, old)
    with pytest.raises(SnnFileError, match="pickled Python objects.*trusted=True"):
        snnbridge.load(old)
    assert torch.equal(snnbridge.load(old, trusted=True)(test_input), snn(test_input))


# -- files that cannot be loaded ------------------------------------------------------------------------------


@pytest.fixture
def saved(small_resnet, calib_batches, tmp_path):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=3, progress=False)
    for site in snn.sites.values():
        site.corrections.append(WarmupShift())
    return snn, snnbridge.save(snn, tmp_path / "good.pt")


def _rewrite(path, out, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, out)
    return out


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnnFileError, match="truncated or damaged"):
        snnbridge.load(cut, model=zoo.small_resnet)


def test_newer_format_version(saved, tmp_path):
    _, path = saved
    with pytest.raises(SnnFileError, match=r"format 99.*Upgrade snnbridge"):
        snnbridge.load(_rewrite(path, tmp_path / "new.pt", format_version=99), model=zoo.small_resnet)


def test_missing_fields(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    del payload["sites"]
    torch.save(payload, tmp_path / "lost.pt")
    with pytest.raises(SnnFileError, match="lacks sites.*damaged"):
        snnbridge.load(tmp_path / "lost.pt", model=zoo.small_resnet)


def test_mismatched_architectures(saved):
    _, path = saved
    with pytest.raises(SnnFileError, match=r"not the architecture.*different shapes: .*conv1"):
        snnbridge.load(path, model=lambda: zoo.SmallResNet(channels=4))
    with pytest.raises(SnnFileError, match=r"not the architecture.*activation sites"):
        snnbridge.load(path, model=zoo.make_net)


def test_ann_checkpoint_instead_of_snn(tmp_path):
    torch.save(zoo.small_resnet().state_dict(), tmp_path / "ann.pt")
    with pytest.raises(SnnFileError, match="ANN's checkpoint: convert it first"):
        snnbridge.load(tmp_path / "ann.pt", model=zoo.small_resnet)


def test_correction_class_not_loaded(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    for site in payload["sites"].values():
        site["corrections"][0]["class"] = "someone_elses_plugin:Secret"
    torch.save(payload, tmp_path / "foreign.pt")
    with pytest.raises(SnnFileError, match="not loaded here: install the plugin.*'someone_elses_plugin'"):
        snnbridge.load(tmp_path / "foreign.pt", model=zoo.small_resnet)


def test_recipe_plugin_not_installed(saved, tmp_path):
    _, path = saved
    out = _rewrite(path, tmp_path / "p.pt", recipe=[{"not_a_plugin": {}}])
    with pytest.raises(SnnFileError, match="recipe or backend cannot be set up here.*not_a_plugin"):
        snnbridge.load(out, model=zoo.small_resnet)


def test_bad_model_argument(saved):
    _, path = saved
    with pytest.raises(SnnFileError, match="model= must be the ANN"):
        snnbridge.load(path, model=42)
    with pytest.raises(SnnFileError, match="returned int, not a torch.nn.Module"):
        snnbridge.load(path, model=lambda: 3)


class _Opaque:
    pass


def test_unsavable_attachments_are_refused_before_writing(saved, tmp_path):
    snn, _ = saved
    snn.timestep_checks.append(lambda s, T: None)
    with pytest.raises(SnnFileError, match="cannot be saved with.*TimestepCheck"):
        snnbridge.save(snn, tmp_path / "bad.pt")
    snn.timestep_checks.pop()

    class Local(WarmupShift):
        pass

    site = next(iter(snn.sites.values()))
    site.corrections.append(Local())
    with pytest.raises(SnnFileError, match="defined inside a function"):
        snnbridge.save(snn, tmp_path / "bad.pt")
    site.corrections.pop()
    with pytest.raises(SnnFileError, match=r"metadata\['obj'\] is a .*_Opaque.*pickled=True"):
        snnbridge.save(snn, tmp_path / "bad.pt", metadata={"obj": _Opaque()})
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(SnnFileError, match="takes the SpikingModel"):
        snnbridge.save(zoo.small_resnet(), tmp_path / "ann.pt")


def test_pickled_save_of_unpicklable_attachment(saved, tmp_path):
    snn, _ = saved
    snn.timestep_checks.append(lambda s, T: None)
    with pytest.raises(SnnFileError, match="cannot be saved pickled"):
        snnbridge.save(snn, tmp_path / "bad.pt", pickled=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt"]


def test_missing_file():
    with pytest.raises(SnnFileError, match="does not exist; create one"):
        snnbridge.load("/nonexistent/snn.pt")


def test_pickle_module_is_not_imported_by_reading(saved):
    """Reading uses the weights-only unpickler: a payload that names a global is refused, not run."""
    _, path = saved

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = path.parent / "evil.pt"
    torch.save({"format": "snnbridge-snn", "format_version": 2, "x": Evil()}, bad, pickle_module=pickle)
    with pytest.raises(SnnFileError, match="pickled Python objects"):
        snnbridge.load(bad)
