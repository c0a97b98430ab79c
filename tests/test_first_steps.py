"""The first steps a new user takes through the Python API, and the mistakes they make there.

Calibration data given as one tensor (or an ``(x, y)`` pair), progress bars (none for fast
work, ``progress=False`` and ``TQDM_DISABLE`` honoured), T-specific corrections run past
their T (one error before any simulation), and plot titles that say what a reader needs.
The command-line side (run records, --checkpoint, flag names) is in test_cli.py.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

import snnbridge
from helpers import zoo
from snnbridge.context import calibration_batches
from snnbridge.errors import CalibrationError, TimestepError
from snnbridge.plots import layer_report_figure, layer_report_title, recipe_label, run_title

REPO = Path(__file__).resolve().parents[1]


def _images(n: int, seed: int = 0, shape=(3, 8, 8)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _thresholds(snn) -> dict:
    return {n: s.threshold for n, s in snn.specs.items()}


# -- calibration given as samples ------------------------------------------------------------------------


def test_a_tensor_of_samples_is_split_into_batches_not_read_image_by_image(small_resnet):
    x = _images(64)
    batches = calibration_batches(x, 16)
    assert [tuple(b.shape) for b in batches] == [(16, 3, 8, 8)] * 4
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=x, timesteps=2, progress=False)
    assert _thresholds(snn) == _thresholds(snnbridge.convert(small_resnet, ["maxnorm"], calibration=[x], timesteps=2,
                                                             progress=False))
    # calibration_batch_size decides the batches: two of 16 samples are not the whole tensor
    capped = snnbridge.convert(small_resnet, ["maxnorm"], calibration=x, calibration_batch_size=16,
                               calibration_batches=2, timesteps=2, progress=False)
    listed = snnbridge.convert(small_resnet, ["maxnorm"], calibration=list(x.split(16)), calibration_batches=2,
                               timesteps=2, progress=False)
    assert _thresholds(capped) == _thresholds(listed) != _thresholds(snn)


def test_an_inputs_targets_pair_is_samples_and_a_list_stays_batches(small_resnet):
    x, y = _images(48, seed=1), torch.randint(0, 10, (48,))
    assert len(calibration_batches((x, y), 16)) == 3 and torch.equal(calibration_batches((x, y), 16)[0], x[:16])
    pair = snnbridge.convert(small_resnet, ["maxnorm"], calibration=(x, y), timesteps=2, progress=False)
    plain = snnbridge.convert(small_resnet, ["maxnorm"], calibration=x, timesteps=2, progress=False)
    assert _thresholds(pair) == _thresholds(plain)
    a, b = x[:24], x[24:]
    assert calibration_batches([a, b]) == [a, b]  # a list of tensors is a list of batches
    same = calibration_batches((a, b))
    assert same == (a, b)  # two same-shaped tensors are not an (inputs, targets) pair: two batches


def test_a_dataset_is_read_in_batches_and_batched_data_refuses_a_batch_size(small_resnet):
    from torch.utils.data import TensorDataset

    x = _images(40, seed=4)
    dataset = TensorDataset(x, torch.zeros(40, dtype=torch.long))  # yields one (image, label) sample at a time
    assert [b[0].shape[0] for b in calibration_batches(dataset, 16)] == [16, 16, 8]
    from_dataset = snnbridge.convert(small_resnet, ["maxnorm"], calibration=dataset, calibration_batch_size=16,
                                     timesteps=2, progress=False)
    assert from_dataset.input_shape == (3, 8, 8)
    assert _thresholds(from_dataset) == _thresholds(snnbridge.convert(small_resnet, ["maxnorm"], calibration=x,
                                                                      timesteps=2, progress=False))
    with pytest.raises(CalibrationError, match=r"calibration_batch_size=16 applies to .* samples.*list is batched "
                                               r"already.*Drop calibration_batch_size"):
        snnbridge.convert(small_resnet, ["maxnorm"], calibration=[x], calibration_batch_size=16, timesteps=2)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3 * 8 * 8), r"1-D tensor of shape \(192,\).*\[N, C, H, W\].*unsqueeze\(0\)"),
    (torch.tensor(1.0), r"0-D tensor"),
    (torch.rand(16, 5, 8, 8), r"first calibration batch, shaped \[16, 5, 8, 8\].*batch dimension first.*"
                              r"calibration_batch_size"),
])
def test_calibration_tensors_that_cannot_be_samples(small_resnet, bad, match):
    with pytest.raises(CalibrationError, match=match):
        snnbridge.convert(small_resnet, ["maxnorm"], calibration=bad, timesteps=2, progress=False)


# -- progress bars -------------------------------------------------------------------------------------------


def test_every_progress_bar_goes_through_snnbridge_progress():
    for path in sorted((REPO / "snnbridge").glob("*.py")) + sorted((REPO / "plugins").glob("*.py")):
        if path.name == "progress.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "tqdm" for n in names), f"{path.name} imports tqdm itself"


def test_a_fast_conversion_draws_no_bar_by_default(small_resnet, calib_batches, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=2)
    snnbridge.accuracy_curve(snn, [(calib_batches[0], torch.zeros(16, dtype=torch.long))])
    assert capsys.readouterr().err == ""


def test_slow_steps_show_bars_unless_disabled(small_resnet, calib_batches, capsys, monkeypatch):
    monkeypatch.setattr("snnbridge.progress.DELAY_S", 0)  # every step counts as slow
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    snnbridge.convert(small_resnet, [{"ltb": {"iterations": 2}}], calibration=calib_batches, timesteps=2)
    err = capsys.readouterr().err
    assert "collect" in err or "ltb: threshold balancing" in err
    snnbridge.convert(small_resnet, [{"ltb": {"iterations": 2}}], calibration=calib_batches, timesteps=2,
                      progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")  # set after tqdm was imported: snnbridge reads it on every bar
    snnbridge.convert(small_resnet, [{"ltb": {"iterations": 2}}], calibration=calib_batches, timesteps=2)
    assert capsys.readouterr().err == ""


def test_plugins_get_the_same_bars_through_ctx(small_resnet, calib_batches, capsys, monkeypatch):
    from snnbridge.context import ConversionContext
    from snnbridge.graph import trace_for_conversion

    monkeypatch.setattr("snnbridge.progress.DELAY_S", 0)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    graph = trace_for_conversion(small_resnet)
    for progress, shown in ((True, True), (False, False)):
        ctx = ConversionContext(graph, timesteps=2, calibration=calib_batches, progress=progress)
        assert list(ctx.progress_bar(range(3), desc="my plugin")) == [0, 1, 2]
        assert ("my plugin" in capsys.readouterr().err) is shown


# -- T-specific corrections past their T ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ftbc_snn():
    torch.manual_seed(0)
    net = zoo.randomize_bn(zoo.SmallResNet()).eval()
    return snnbridge.convert(net, ["maxnorm", {"ftbc": {"batches": 1, "iterations": 1}}], calibration=[_images(16)],
                             timesteps=4, progress=False)


def test_running_past_the_calibrated_T_is_one_error_before_any_simulation(ftbc_snn, monkeypatch):
    x = _images(2, seed=3)
    simulated = []
    biased = snnbridge.NeuronSpec.biased

    def spy(self, *args, **kwargs):  # every simulated step of a site with a per-step table passes here
        simulated.append(1)
        return biased(self, *args, **kwargs)

    monkeypatch.setattr(snnbridge.NeuronSpec, "biased", spy)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(
            TimestepError, match=r"at most T = 4 .*\(ftbc: T-specific\).*T = 6 was asked for.*timesteps=6"):
        warnings.simplefilter("always")
        ftbc_snn(x, timesteps=6)
    assert not caught and not simulated  # no warning first, and no step was simulated
    ftbc_snn(x, timesteps=4)
    assert simulated  # (the spy sees simulations)
    with pytest.warns(snnbridge.TimestepMismatchWarning, match="calibrated for T = 4 steps but .* run for T = 2"):
        ftbc_snn(x, timesteps=2)  # shorter than calibrated: still the on_mismatch policy (warn)
    assert isinstance(TimestepError("x"), snnbridge.InputError)  # code catching InputError keeps working


def test_accuracy_curve_refuses_before_reading_data(ftbc_snn):
    def data():
        raise AssertionError("data was read")
        yield  # pragma: no cover

    with pytest.raises(TimestepError, match="at most T = 4"):
        snnbridge.accuracy_curve(ftbc_snn, data(), [1, 8], progress=False)


# -- plot titles ----------------------------------------------------------------------------------------


def test_titles_name_non_default_options_backend_and_T():
    recipe = snnbridge.build_recipe([{"robustnorm": {"percentile": 99.5}}, {"ftbc": {"timesteps": 8}}]).to_list()
    assert recipe_label(recipe) == "robustnorm (percentile 99.5) + ftbc (timesteps 8)"
    assert recipe_label(snnbridge.build_recipe(["maxnorm"]).to_list()) == "maxnorm"
    assert recipe_label([{"not_installed": {"a": 1}}]) == "not_installed (a 1)"  # unknown defaults: shown
    title = run_title(recipe, "snntorch", 8)
    assert title.splitlines() == ["SNN accuracy vs T: robustnorm (percentile 99.5) + ftbc (timesteps 8)",
                                  "snntorch backend, converted for T = 8"]


def _report(n_sites: int) -> dict:
    sites = [{"site": f"features_block{i}_conv_relu", "kind": "relu", "clip_error": 0.01 * i, "quant_error": 0.02,
              "error": 0.02 + 0.01 * i, "firing_rate": 0.1, "silent": 0.3} for i in range(n_sites)]
    recipe = snnbridge.build_recipe([{"robustnorm": {"percentile": 99.99, "channelwise": True}}, "snn_calibration"])
    return {"timesteps": 16, "steps_run": 16, "backend": "spikingjelly", "recipe": recipe.to_list(), "sites": sites}


def test_layer_report_figure_gives_the_silent_fraction_its_own_axis_and_fits_the_title(tmp_path):
    report = _report(3)
    fig = layer_report_figure(report)
    axes = fig.axes
    assert len(axes) == 3  # errors, firing rate, silent fraction: no twin axis
    positions = {tuple(round(v, 4) for v in ax.get_position().bounds) for ax in axes}
    assert len(positions) == 3
    assert [ax.get_ylabel().split("\n")[0] for ax in axes] == ["mean error", "firing rate", "silent neurons"]
    assert axes[2].get_ylim() == (0.0, 1.0)
    title = axes[0].get_title()
    width_chars = int(fig.get_figwidth() * 10)
    assert all(len(line) <= width_chars for line in title.splitlines())
    assert "robustnorm (percentile 99.99, channelwise True) + snn_calibration" in " ".join(title.split())
    assert "spikingjelly backend, T = 16" in title and "steps run" not in title
    assert layer_report_title({**report, "steps_run": 20}).endswith("T = 16, 20 steps run")
    json_path, png_path = snnbridge.plot_layer_report(report, tmp_path / "layers")
    assert json_path.is_file() and png_path.read_bytes()[:4] == b"\x89PNG"


def test_layer_report_records_the_recipe(small_resnet, calib_batches):
    snn = snnbridge.convert(small_resnet, [{"robustnorm": {"percentile": 99.0}}], calibration=calib_batches,
                            timesteps=2, progress=False)
    report = snnbridge.layer_report(small_resnet, snn, calib_batches[0][:4])
    assert report["recipe"] == snn.recipe
    assert "robustnorm (percentile 99)" in layer_report_title(report)
