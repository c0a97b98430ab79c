"""srp plugin: golden fact G7 on every backend, the official network warm-up procedure, steps run, errors."""

from __future__ import annotations

import pytest
import torch

import snnbridge
from helpers.qcfs_family import BACKENDS, one_site, qcfs_mlp, reference_srp
from snnbridge import PresimRecord
from snnbridge.plugins.qcfs import QCFS
from snnbridge.plugins.srp import ResidualPotentialMask

G7_X = torch.tensor([[0.9, 0.9, -0.8, -0.8],
                     [0.3, 0.3, 0.3, 0.3],
                     [-0.3, -0.3, -0.3, -0.3]]).T.unsqueeze(-1)  # [tau=4, B=3, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_g7_residual_potential_mask(backend):
    snn = snnbridge.convert(one_site(lam=1.0, levels=4), ["qcfs", "srp"], example_input=torch.rand(2, 1),
                            timesteps=4, backend=backend, progress=False)
    site = next(iter(snn.sites.values()))
    v0 = torch.full((3, 1), site.spec.v0)
    assert site.spec.v0 == 0.5
    pre = site.neuron.simulate(G7_X, v0.clone(), return_v=True)
    assert pre.v_seq[-1].view(-1).tolist() == pytest.approx([-1.3, 0.7, -0.7], abs=1e-6)
    adj = ResidualPotentialMask(tau=4).adjust(site, PresimRecord(G7_X, pre.spikes, pre.v_seq, v0, 1.0), v0.clone())
    assert adj.v0 is None  # the counted run restarts from the base v0
    assert adj.mask.view(-1).tolist() == [0.0, 1.0, 0.0]
    # the QCFS ANN output of the first case is 0: mean 0.05 < theta/(2T) = 0.125
    with torch.no_grad():
        assert float(QCFS(levels=4, lambda_init=1.0)(G7_X[:, 0].mean())) == 0.0


def test_mask_threshold_is_relative_to_theta():
    corr = ResidualPotentialMask(tau=2, mask_threshold=1e-3)
    v_seq = torch.tensor([[0.0, 0.0, 0.0], [0.0015, 0.0025, -0.1]]).unsqueeze(-1)  # [2, 3, 1]
    rec = PresimRecord(v_seq, torch.zeros_like(v_seq), v_seq, torch.zeros(3, 1), 2.0)
    assert corr.adjust(None, rec, torch.zeros(3, 1)).mask.view(-1).tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_equals_the_official_warmup_procedure(backend):
    net = qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels=4, seed=2)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(6)) * 2
    for tau, T in ((4, 6), (3, 2)):
        snn = snnbridge.convert(net, ["qcfs", {"srp": {"tau": tau}}], example_input=x[:2], timesteps=T,
                                backend=backend, progress=False)
        assert snn.warmup == tau and snn.steps_run == tau + T and snn.timesteps == T
        with torch.no_grad():
            got = snn.sweep(x)
            want = reference_srp(net, x, T, tau)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            snn.time_chunk = 1  # chunked in time: same result
            torch.testing.assert_close(snn.sweep(x), got, rtol=0, atol=0)
        masks = [s.mask for s in snn.sites.values()]
        assert all(m is not None and m.shape[0] == 40 for m in masks) and any((m == 0).any() for m in masks)


def test_srp_needs_a_qcfs_network_earlier_in_the_recipe():
    with pytest.raises(snnbridge.MissingRequirementError, match=r"'srp' needs 'quantized_ann'.*qcfs"):
        snnbridge.convert("not a model", ["maxnorm", "srp"], timesteps=4)
    with pytest.raises(snnbridge.MissingRequirementError, match=r"'srp' needs 'quantized_ann'"):
        snnbridge.convert("not a model", [{"clipshift": {"threshold_source": "y_th"}}, "srp"], timesteps=4)


@pytest.mark.parametrize(("levels", "tau"), [(2, 2), (4, 4), (8, 8), (16, 8)])
def test_tau_auto_follows_the_quantization_levels(levels, tau):
    """The default tau is the network's QCFS L (capped at 8), identical to asking for that tau by hand."""
    net = qcfs_mlp(levels=levels, seed=4)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(3)) * 2
    snn = snnbridge.convert(net, ["qcfs", "srp"], example_input=x[:2], timesteps=2, progress=False)
    assert snn.warmup == tau and snn.steps_run == tau + 2
    assert any(f"warm-up of {tau} uncounted steps (auto" in n for n in snn.report["notes"])
    fixed = snnbridge.convert(net, ["qcfs", {"srp": {"tau": tau}}], example_input=x[:2], timesteps=2, progress=False)
    torch.testing.assert_close(snn.sweep(x), fixed.sweep(x), rtol=0, atol=0)


def test_tau_auto_takes_the_largest_site_levels_and_falls_back_to_four():
    from snnbridge import SiteInfo
    from snnbridge.plugins.srp import warmup_steps

    def info(levels):
        return SiteInfo("s", "qcfs", claim=type("C", (), {"levels": levels})())

    assert warmup_steps([info(2), info(6)], "auto") == 6
    assert warmup_steps([info(4), info(32)], "auto") == 8
    assert warmup_steps([SiteInfo("s", "custom", claim=object())], "auto") == 4
    assert warmup_steps([info(6)], 3) == 3
