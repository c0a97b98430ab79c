"""cos plugin: golden fact G6 on every backend, the official layer-by-layer procedure, steps run, errors."""

from __future__ import annotations

import pytest
import torch

import snnbridge
from helpers.qcfs_family import BACKENDS, one_site, qcfs_mlp, reference_cos
from snnbridge import PresimRecord
from snnbridge.plugins.cos import OffsetSpikeCalibration

# G6 inputs (theta = 1, rho = T = 4, v0 = 1/2), one neuron per sample
G6_X = torch.tensor([[0.9, 0.9, -0.8, -0.8],
                     [0.0, 0.0, 0.0, 2.0],
                     [2.5, 0.0, 0.0, 0.0],
                     [0.3, 0.3, 0.3, 0.3]]).T.unsqueeze(-1)  # [T=4, B=4, 1]


def _site(backend, recipe=("qcfs", "cos")):
    snn = snnbridge.convert(one_site(lam=1.0, levels=4), list(recipe), example_input=torch.rand(2, 1), timesteps=4,
                            backend=backend, progress=False)
    return snn, next(iter(snn.sites.values()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_g6_offset_spike_rule(backend):
    snn, site = _site(backend)
    assert site.spec.threshold == 1.0 and site.spec.v0 == 0.5
    v0 = torch.full((4, 1), 0.5)
    pre = site.neuron.simulate(G6_X, v0.clone(), return_v=True)
    assert pre.spikes.sum(0).view(-1).tolist() == [2, 1, 3, 1]
    assert pre.v_seq[-1].view(-1).tolist() == pytest.approx([-1.3, 1.5, 0.0, 0.7], abs=1e-6)
    record = PresimRecord(G6_X, pre.spikes, pre.v_seq, v0, 1.0)

    one = OffsetSpikeCalibration(rho=4, rounds=1).adjust(site, record, v0.clone()).v0
    assert one.view(-1).tolist() == pytest.approx([-0.5, 1.5, 0.5, 0.5], abs=1e-6)
    rerun = site.neuron.simulate(G6_X, one.clone())
    assert rerun.spikes.sum(0).view(-1).tolist() == [1, 2, 3, 1]  # QCFS targets: 0, 2, 3, 1

    two = OffsetSpikeCalibration(rho=4, rounds=2).adjust(site, record, v0.clone()).v0
    assert two.view(-1).tolist() == pytest.approx([-1.5, 1.5, 0.5, 0.5], abs=1e-6)  # iterative property
    rerun = site.neuron.simulate(G6_X, two.clone())
    assert rerun.spikes.sum(0).view(-1).tolist() == [0, 2, 3, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_shift_sizes_margins_and_clamp(backend):
    """Shifts larger than theta use the official 0.999 / 1.001 margins; a neuron that fired at every step has no
    silent step and gets the clamped shift theta (official: ~1001 theta)."""
    snn, site = _site(backend)
    x = torch.tensor([[2.6, -3.0, -1.0, -1.0],    # over: m_min = 3.1 -> shift 2.101
                      [-5.0, 0.0, 0.0, 7.0],     # under: v_max = -4.5 -> shift 5.501
                      [1.2, 1.2, 1.2, 1.2]]).T.unsqueeze(-1)  # fires every step, v(4) = 1.3 -> clamp to 1
    v0 = torch.full((3, 1), 0.5)
    pre = site.neuron.simulate(x, v0.clone(), return_v=True)
    got = OffsetSpikeCalibration(4, 1).adjust(site, PresimRecord(x, pre.spikes, pre.v_seq, v0, 1.0), v0.clone()).v0
    assert got.view(-1).tolist() == pytest.approx([0.5 - 2.101, 0.5 + 5.501, 1.5], abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_equals_the_official_layer_by_layer_procedure(backend):
    net = qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels=4, seed=1)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5)) * 2
    for rho, rounds, T in ((4, 1, 8), (2, 2, 6)):
        snn = snnbridge.convert(net, ["qcfs", {"cos": {"rho": rho, "rounds": rounds}}], example_input=x[:2],
                                timesteps=T, backend=backend, progress=False)
        assert snn.warmup == 0 and snn.lookahead == rho and snn.steps_run == rho + T
        with torch.no_grad():
            got = snn.sweep(x)
            want = reference_cos(net, x, T, rho, rounds)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(snn(x), got[-1])
        plain = snnbridge.convert(net, ["qcfs"], example_input=x[:2], timesteps=T, backend=backend, progress=False)
        assert not torch.equal(plain.sweep(x), got)  # the correction does something on this network


def test_runs_shorter_than_rho_are_the_prefix_of_the_official_run():
    """T < rho: the SNN simulates rho counted steps (the look-ahead needs them) and returns the first T, what the
    official code reports for T < rho."""
    net = qcfs_mlp(lams=(2.0, 0.5))
    x = torch.randn(8, 6)
    want = reference_cos(net, x, 8, 4)
    snn = snnbridge.convert(net, ["qcfs", "cos"], example_input=x[:2], timesteps=2, progress=False)
    assert snn.lookahead == 4 and snn.steps_run == 4 + 4
    torch.testing.assert_close(snn(x), want[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(snn.sweep(x), want[:2], rtol=0, atol=1e-5)
    torch.testing.assert_close(snn(x, timesteps=1), want[0], rtol=0, atol=1e-5)


def test_cos_needs_a_qcfs_network_earlier_in_the_recipe():
    with pytest.raises(snnbridge.MissingRequirementError, match=r"'cos' needs 'quantized_ann'.*qcfs"):
        snnbridge.convert("not a model", ["maxnorm", "cos"], timesteps=4)
    with pytest.raises(snnbridge.PluginConflictError, match=r"'qcfs' comes after it; move 'qcfs' before 'cos'"):
        snnbridge.convert("not a model", ["cos", "qcfs"], timesteps=4)
    with pytest.raises(snnbridge.PluginConflictError, match=r"'opi' cannot be combined with 'clipshift'"):
        snnbridge.build_recipe(["clipshift", "opi", "cos"])


@pytest.mark.parametrize(("levels", "rho"), [(2, 2), (4, 4), (8, 8), (16, 8)])
def test_rho_auto_follows_the_quantization_levels(levels, rho):
    """The default rho is the network's QCFS L (capped at the official ImageNet 8): the counted run and the
    note say so, and the result is the same as asking for that rho by hand."""
    net = qcfs_mlp(levels=levels, seed=3)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(2)) * 2
    snn = snnbridge.convert(net, ["qcfs", "cos"], example_input=x[:2], timesteps=8, progress=False)
    assert snn.lookahead == rho and snn.steps_run == rho + 8
    assert any(f"rho = {rho} pre-simulation steps (auto: the sites' quantization levels L = {levels}" in n
               for n in snn.report["notes"])
    fixed = snnbridge.convert(net, ["qcfs", {"cos": {"rho": rho}}], example_input=x[:2], timesteps=8, progress=False)
    torch.testing.assert_close(snn.sweep(x), fixed.sweep(x), rtol=0, atol=0)


def test_rho_auto_without_levels_is_the_official_four():
    """A quantized activation whose claim gives no levels (a third-party plugin's) gets the official CIFAR 4."""
    from snnbridge import SiteInfo
    from snnbridge.plugins.cos import presim_steps

    assert presim_steps(SiteInfo("a", "custom", claim=object()), "auto") == 4
    assert presim_steps(SiteInfo("a", "qcfs", claim=type("C", (), {"levels": 16})()), "auto") == 8
    assert presim_steps(SiteInfo("a", "qcfs", claim=type("C", (), {"levels": 3})()), "auto") == 3
    assert presim_steps(SiteInfo("a", "qcfs", claim=type("C", (), {"levels": 3})()), 5) == 5
