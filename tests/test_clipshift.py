"""clipshift plugin (Deng & Gu): G15, thresholds, the per-step half shift and G5's shift-vs-v0 timing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from helpers.qcfs_family import BACKENDS, one_site, spike_counts
from snnbridge.plugins.clipshift import ThresholdReLU


def one_clip_site(y_th: float = 1.0) -> nn.Module:
    return snnbridge.prepare(nn.Sequential(nn.ReLU()), [{"clipshift": {"y_th": y_th}}]).eval()


def test_g15_threshold_relu_forward_and_gradient():
    act = ThresholdReLU(1.0)
    x = torch.tensor([-0.5, 0.3, 1.0, 1.7, 0.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == pytest.approx([0.0, 0.3, 1.0, 1.0, 0.0])
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]  # 1 on the closed interval [0, y_th]


def test_train_shift_moves_the_clip_right():
    act = ThresholdReLU(1.0, train_shift_T=4)  # y_th / (2 T_ref) = 0.125
    assert act(torch.tensor([0.1, 0.5, 1.2])).tolist() == pytest.approx([0.0, 0.375, 1.0])


def test_prepare_and_threshold_sources():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    prepared = snnbridge.prepare(model, [{"clipshift": {"y_th": 2.0}}]).eval()
    assert sum(isinstance(m, ThresholdReLU) for m in prepared.modules()) == 2
    data = [torch.randn(64, 3)]
    maxima = []
    hooks = [m.register_forward_hook(lambda m, i, o: maxima.append(float(o.max()))) for m in prepared.modules()
             if isinstance(m, ThresholdReLU)]
    with torch.no_grad():
        prepared(data[0])
    for h in hooks:
        h.remove()
    snn = snnbridge.convert(prepared, ["clipshift"], calibration=data, timesteps=8, progress=False)
    assert [s.threshold for s in snn.specs.values()] == pytest.approx(maxima)
    assert all(s.threshold <= 2.0 for s in snn.specs.values())
    assert [s.step_bias for s in snn.specs.values()] == pytest.approx([m / 16 for m in maxima])
    assert all(s.v0 == 0.0 for s in snn.specs.values())
    assert [s.info.kind for s in snn.sites.values()] == ["threshold_relu"] * 2
    # the clip bound as threshold (no data), and the official fixed reference T = 32
    snn2 = snnbridge.convert(prepared, [{"clipshift": {"threshold_source": "y_th", "shift_T": 32}}],
                             example_input=data[0][:2], timesteps=8, progress=False)
    assert [(s.threshold, s.step_bias) for s in snn2.specs.values()] == [(2.0, 2.0 / 64)] * 2
    with pytest.raises(snnbridge.MissingRequirementError, match="threshold_source"):
        snnbridge.convert(prepared, ["clipshift"], example_input=data[0][:2], timesteps=8, progress=False)


def test_clipped_relu_models_convert_plain_relu_is_refused():
    clipped = nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(0.0, 3.0), nn.Linear(4, 2))
    snn = snnbridge.convert(clipped, [{"clipshift": {"threshold_source": "y_th"}}], example_input=torch.rand(2, 3),
                            timesteps=4, progress=False)
    assert [s.threshold for s in snn.specs.values()] == [3.0]
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(snnbridge.MissingRequirementError, match=r"site\(s\) '1' are unbounded"):
        snnbridge.convert(plain, ["clipshift"], calibration=[torch.rand(4, 3)], timesteps=4, progress=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_g5_per_step_shift_versus_initial_potential(backend):
    """x = 0.3, theta = 1, T = 8: +1/16 per step (clipshift) and v0 = 1/2 (opi, qcfs) give the same total but
    different timing; the conversion identity holds exactly in every case."""
    x = torch.tensor([[0.3]])
    calib = [torch.tensor([[0.3], [1.7]])]  # clipped maximum = 1.0 = theta
    shift = snnbridge.convert(one_clip_site(1.0), ["clipshift"], calibration=calib, timesteps=8, backend=backend,
                              progress=False)
    relu = nn.Sequential(nn.ReLU())
    opi = snnbridge.convert(relu, ["maxnorm", "opi"], calibration=[torch.tensor([[0.3], [1.0]])], timesteps=8,
                            backend=backend, progress=False)
    qcfs = snnbridge.convert(one_site(lam=1.0, levels=8), ["qcfs"], example_input=x, timesteps=8, backend=backend,
                             progress=False)
    want = {"shift": [0, 0, 1, 1, 1, 2, 2, 2], "opi": [0, 1, 1, 1, 2, 2, 2, 2], "qcfs": [0, 1, 1, 1, 2, 2, 2, 2]}
    for key, snn in (("shift", shift), ("opi", opi), ("qcfs", qcfs)):
        spec = next(iter(snn.specs.values()))
        assert spec.threshold == 1.0
        (name,) = snn.sites
        with snn.record(keep=("drive", "spikes", "v")) as rec:
            per_step = snn.run(x)
        assert per_step.view(-1).cumsum(0).tolist() == want[key], key
        trace = rec[name]
        n = trace.spikes.sum(0)
        v0 = spec.v0
        identity = trace.drive.mean(0) - (trace.v[-1] - v0) / 8
        torch.testing.assert_close(spec.threshold * n / 8, identity, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_step_shift_turns_floor_into_rounding(backend):
    """theta/(2T) per step: N = clip(round(xT/theta), 0, T) for constant x (away from ties)."""
    T = 8
    x = ((torch.arange(200, dtype=torch.float32) + 0.37) / 150).view(-1, 1)  # 0 .. 1.33, no exact ties
    snn = snnbridge.convert(one_clip_site(1.0), ["clipshift"], calibration=[torch.tensor([[2.0]])], timesteps=T,
                            backend=backend, progress=False)
    _, spikes = spike_counts(snn, x)
    n = next(iter(spikes.values())).sum(0)
    assert torch.equal(n, torch.clamp(torch.floor(x * T + 0.5), 0, T))


def test_opi_with_clipshift_is_refused_naming_both_before_any_work():
    for recipe in (["clipshift", "opi"], ["opi", "clipshift"]):
        with pytest.raises(snnbridge.PluginConflictError, match=r"'opi' cannot be combined with 'clipshift'"):
            snnbridge.convert("not a model", recipe, timesteps=4)
