"""FTBC (plugin ``ftbc``): golden fact G16, per-step bias tables, selection without test data, T."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import snnbridge
from helpers import data_driven as dd
from helpers.plugins import fixed_threshold
from snnbridge import PluginInfo, hookimpl

BACKENDS = snnbridge.get_registry().names("backend")


class _V0:
    """Initial potential = fraction * theta (a test stand-in for a v0 base writer)."""

    name = "v0frac"

    def __init__(self, fraction):
        self.fraction = fraction

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="v0 = fraction * theta (test)", provides=("v0_base",))

    @hookimpl
    def snnbridge_configure_neuron(self, spec):
        return spec.replace(v0=self.fraction * spec.threshold)


@pytest.mark.parametrize("backend", BACKENDS)
def test_g16_bias_update(backend):
    # one channel, theta = 1, v0 = 0.7: step 1 fires for ANN values (0.3, 0.1, 0.2, 0.6) -> spikes (1, 0, 0, 1),
    # mean 0.5; ANN mean 0.3; alpha = 0.5 -> b[1] += 0.1, subtracted from the membrane (step_bias holds -b)
    net = nn.Sequential(nn.ReLU(), nn.Linear(1, 1)).eval()
    x = torch.tensor([[0.3], [0.1], [0.2], [0.6]])
    snn = snnbridge.convert(net, [fixed_threshold("one", 1.0), _V0(0.7), {"ftbc": {"batches": 1, "iterations": 1}}],
                            calibration=[x], timesteps=4, progress=False, backend=backend)
    table = snn.specs["0"].step_bias
    assert table.shape == (4, 1)
    assert float(table[0, 0]) == pytest.approx(-0.1, abs=1e-6)


def test_g16_formula_and_refire_carry_the_corrected_membrane():
    from snnbridge.plugins.ftbc import bias_step_error

    e = bias_step_error(torch.tensor([[1.0], [0.0], [0.0], [1.0]]), torch.tensor([[0.3], [0.1], [0.2], [0.6]]))
    assert float(0.5 * e) == pytest.approx(0.1)
    # step 2 after the re-fire of step 1 with b[1] = 0.1: membranes 0.7 + x - 0.1 -> (0.9, 0.7, 0.8, 1.2) fire
    # (0, 0, 0, 1) -> v = (0.9, 0.7, 0.8, 0.2); step 2 adds x: (1.2, 0.8, 1.0, 0.8) -> spikes (1, 0, 1, 0):
    # mean 0.5, ANN 0.3 -> b[2] = 0.1 as well
    net = nn.Sequential(nn.ReLU(), nn.Linear(1, 1)).eval()
    x = torch.tensor([[0.3], [0.1], [0.2], [0.6]])
    snn = snnbridge.convert(net, [fixed_threshold("one", 1.0), _V0(0.7), {"ftbc": {"batches": 1, "iterations": 1}}],
                            calibration=[x], timesteps=2, progress=False)
    torch.testing.assert_close(snn.specs["0"].step_bias, torch.tensor([[-0.1], [-0.1]]))


@pytest.fixture(scope="module")
def trained():
    return dd.trained_net(), dd.calibration_batches()


@pytest.mark.parametrize("base", [["robustnorm"], ["maxnorm"]])
def test_ftbc_lowers_the_per_step_error_and_keeps_accuracy(trained, base):
    net, data = trained
    plain = snnbridge.convert(net, base, calibration=data, timesteps=8, progress=False)
    snn = snnbridge.convert(net, [*base, {"ftbc": {"batches": 2, "iterations": 2}}], calibration=data, timesteps=8,
                            progress=False)
    e0, e1 = dd.layer_errors(plain, 8), dd.layer_errors(snn, 8)
    assert dd.total(e1, "steps") < 0.6 * dd.total(e0, "steps"), (e0, e1)
    assert dd.accuracy(snn) >= dd.accuracy(plain)
    for name, spec in snn.specs.items():
        assert spec.step_bias.shape == (8, snn.sites[name].info.channels)


def test_positive_error_means_fewer_spikes():
    # a site that over-fires everywhere (ANN 0, SNN fires from the start because v0 = theta) gets negative biases
    net = nn.Sequential(nn.ReLU(), nn.Linear(2, 1)).eval()
    x = torch.zeros(8, 2)
    snn = snnbridge.convert(net, [fixed_threshold("one", 1.0), _V0(1.0), {"ftbc": {"batches": 1, "iterations": 1}}],
                            calibration=[x], timesteps=4, progress=False)
    table = snn.specs["0"].step_bias
    assert table[0].lt(0).all()
    with snn.record("0") as rec:
        snn(x)
    assert rec["0"].spikes.sum() == 0  # corrected: no spikes for a zero ANN activation


def test_table_is_T_specific(trained):
    net, data = trained
    snn = snnbridge.convert(net, ["robustnorm", {"ftbc": {"batches": 1, "iterations": 1}}], calibration=data,
                            timesteps=4, progress=False)
    x = dd.test_set()[0][:4]
    with warnings.catch_warnings(record=True) as caught, \
            pytest.raises(snnbridge.TimestepError, match="at most T = 4 .*timesteps=8"):
        warnings.simplefilter("always")
        snn(x, timesteps=8)  # one error before any simulation: the 4-row table cannot run 8 steps
    assert not caught  # and no warning about the same thing first
    with pytest.warns(UserWarning, match="calibrated for T = 4"):
        snn(x, timesteps=2)


def test_select_uses_held_out_calibration_batches_only(trained):
    net, data = trained
    used = []

    class Loader:  # records every batch handed out, to show no test image is ever used
        def __iter__(self):
            for b in data:
                used.append(b)
                yield b

        def __len__(self):
            return len(data)

    snn = snnbridge.convert(net, ["robustnorm", {"ftbc": {"batches": 2, "iterations": 2, "select": True}}],
                            calibration=Loader(), timesteps=8, progress=False)
    note = next(n for n in snn.report["notes"] if "held-out" in n)
    assert "kept" in note and "of 2 iteration(s)" in note
    test_x = dd.test_set()[0]
    assert all(not torch.equal(b, test_x[: b.shape[0]]) for b in used)
    with pytest.raises(snnbridge.InputError, match="holdout_batches"):
        snnbridge.convert(net, ["robustnorm", {"ftbc": {"batches": 4, "select": True}}], calibration=data[:1],
                          timesteps=8, progress=False)


def _quadratic_reference(snn, ctx_ann, batches, T, alpha, iterations):
    """FTBC as first written: for every batch and site, re-run the network up to that site and learn its table."""
    for _ in range(iterations):
        for x in batches:
            ann = ctx_ann(x)
            for name, site in snn.sites.items():
                with snn.record(name, keep="drive") as rec:
                    snn.run(x, timesteps=T, until=name)
                drive = rec[name].counted("drive")
                spec = site.spec
                C = drive.shape[2]
                table = spec.step_table(T, C)
                v = site.initial_state(drive[0])
                th = spec.threshold_tensor(drive, 2)
                shape = (1, 1, C) + (1,) * (drive.dim() - 3)
                for t in range(T):
                    step = drive[t:t + 1]
                    e = snnbridge.channels.mean(site.neuron.simulate(step, v).weighted(th)[0]) \
                        - snnbridge.channels.mean(ann[name])
                    table[t] -= alpha * e
                    v = site.neuron.simulate(step - (alpha * e).view(shape), v).v_last
                snn.set_spec(name, spec.replace(step_bias=table))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_run_per_batch_equals_rerunning_up_to_each_site(small_resnet, calib_batches, backend):
    # the residual net: a site's input mixes the outputs of two earlier sites, both already corrected
    T, recipe = 6, ["maxnorm", {"ftbc": {"batches": 3, "iterations": 2}}]
    fast = snnbridge.convert(small_resnet, recipe, calibration=calib_batches[:3], timesteps=T, progress=False,
                             backend=backend)
    ref = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches[:3], timesteps=T, progress=False,
                            backend=backend)
    ref.time_chunk = T
    graph = snnbridge.trace_for_conversion(small_resnet)
    ctx = snnbridge.ConversionContext(graph, timesteps=T, progress=False)
    _quadratic_reference(ref, ctx.site_activations, calib_batches[:3], T, 0.5, 2)
    assert len(fast.sites) == 3  # relu, the block's inner one, the one after the add
    for name in fast.sites:
        torch.testing.assert_close(fast.specs[name].step_bias, ref.specs[name].step_bias, atol=1e-5, rtol=0)


def test_before_fire_sees_every_site_once_in_order_and_may_replace_the_input(small_resnet, calib_batches):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=5, progress=False)
    seen = []

    def silence_first(site, seq):
        seen.append((site.name, tuple(seq.shape)))
        return torch.zeros_like(seq) if site.name == seen[0][0] else None

    x = calib_batches[0][:3]
    with snn.record(list(snn.sites)[0], keep="spikes") as rec:
        snn.run(x, before_fire=silence_first)
    assert [n for n, _ in seen] == list(snn.sites)
    assert all(shape[:2] == (5, 3) for _, shape in seen)
    assert float(rec[list(snn.sites)[0]].counted("spikes").sum()) == 0  # fired on the zeros it was handed
    with pytest.raises(snnbridge.InputError, match="before_fire returned"):
        snn.run(x, before_fire=lambda site, seq: seq[:1])
    torch.testing.assert_close(snn.run(x), snn.run(x, before_fire=lambda site, seq: None))


def test_under_a_longer_lookahead_every_simulated_step_gets_a_row():
    """qcfs + cos (rho 4) + ftbc at T = 2: the run simulates 4 counted steps, so FTBC learns the 4 rows a T = 4
    conversion learns (the rule does not depend on T) and the T = 2 output is their first two steps."""
    from helpers.qcfs_family import qcfs_mlp

    net = qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels=4, seed=1)
    g = torch.Generator().manual_seed(3)
    calib = [torch.randn(32, 6, generator=g) * 2 for _ in range(3)]
    recipe = ["qcfs", {"cos": {"rho": 4}}, {"ftbc": {"batches": 3, "iterations": 2}}]
    short = snnbridge.convert(net, recipe, calibration=calib, timesteps=2, progress=False)
    full = snnbridge.convert(net, recipe, calibration=calib, timesteps=4, progress=False)
    for name in short.sites:
        assert short.specs[name].step_bias.shape[0] == 4
        torch.testing.assert_close(short.specs[name].step_bias, full.specs[name].step_bias)
    assert any(float(b.abs().max()) > 0 for b in (s.step_bias for s in short.specs.values()))
    x = torch.randn(16, 6, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(short(x), full.sweep(x)[1])
