"""Golden facts G13 (BN folding) and G14 (norm baselines, Diehl scaling) through the public API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from helpers.plugins import fixed_threshold


def test_g13_conv_bn_folding():
    conv = nn.Conv2d(1, 1, 1)
    conv.weight.data.fill_(2.0)
    conv.bias.data.fill_(1.0)
    bn = nn.BatchNorm2d(1, eps=0.0)
    bn.weight.data.fill_(3.0)
    bn.bias.data.fill_(0.5)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    model = nn.Sequential(conv, bn, nn.ReLU()).eval()
    prepared = snnbridge.trace_for_conversion(model)
    convs = [m for m in prepared.module.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and not any(isinstance(m, nn.BatchNorm2d) for m in prepared.module.modules())
    assert convs[0].weight.item() == pytest.approx(3.0)
    assert convs[0].bias.item() == pytest.approx(0.5)
    assert prepared.report["folded_bn"] == ["1 -> 0"]


def test_bn_folding_linear_and_conv_without_bias_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    for m in model:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
    model.eval()
    prepared = snnbridge.trace_for_conversion(model)
    assert len(prepared.report["folded_bn"]) == 2
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(prepared.module(x), model(x), rtol=1e-5, atol=1e-5)


def test_bn_after_residual_add_is_kept_not_folded():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x) + x))

    model = Block().eval()
    prepared = snnbridge.trace_for_conversion(model)
    assert prepared.report["folded_bn"] == []
    assert any("bn" in k for k in prepared.report["kept_bn"])
    x = torch.randn(2, 2, 3, 3)
    torch.testing.assert_close(prepared.module(x), model(x))


def _identity_relu_net(features: int = 1):
    """flatten -> ReLU -> Linear: the site's activations are exactly the (non-negative) inputs."""
    head = nn.Linear(features, 1)
    return nn.Sequential(nn.ReLU(), head).eval()


def _ramp_batch():
    values = torch.arange(0, 1001, dtype=torch.float32)
    perm = torch.randperm(1001, generator=torch.Generator().manual_seed(0))
    return values[perm].view(-1, 1)


def _threshold(snn):
    (spec,) = snn.specs.values()
    return spec.threshold


def test_g14_maxnorm_is_the_true_global_max():
    data = [_ramp_batch()[:500], _ramp_batch()[500:]]
    snn = snnbridge.convert(_identity_relu_net(), ["maxnorm"], calibration=data, timesteps=4, progress=False)
    assert _threshold(snn) == 1000.0


def test_maxnorm_is_not_a_running_average():
    # a late small batch must not pull the threshold down (SpikingJelly's EMA would: 0.9*10 + 0.1*1)
    data = [torch.full((4, 1), 10.0), torch.full((4, 1), 1.0)]
    snn = snnbridge.convert(_identity_relu_net(), ["maxnorm"], calibration=data, timesteps=4, progress=False)
    assert _threshold(snn) == 10.0
    ema = snnbridge.convert(_identity_relu_net(), [{"maxnorm": {"momentum": 0.1}}], calibration=data, timesteps=4,
                            progress=False)
    assert _threshold(ema) == pytest.approx(0.9 * 10 + 0.1 * 1)


@pytest.mark.parametrize("p,expected", [(99.9, 999.0), (99.0, 990.0), (100.0, 1000.0), (50.0, 500.0)])
def test_g14_robustnorm_percentile_linear_interpolation(p, expected):
    data = [_ramp_batch()]
    snn = snnbridge.convert(_identity_relu_net(), [{"robustnorm": {"percentile": p}}], calibration=data,
                            timesteps=4, progress=False)
    assert _threshold(snn) == pytest.approx(expected, abs=1e-3)


def test_g14_channelwise_thresholds_per_feature():
    ramp = _ramp_batch()
    data = [torch.cat([ramp, 2 * ramp], dim=1)]  # feature 0: 0..1000, feature 1: 0..2000
    snn = snnbridge.convert(_identity_relu_net(2), [{"maxnorm": {"channelwise": True}}], calibration=data,
                            timesteps=4, progress=False)
    torch.testing.assert_close(_threshold(snn), torch.tensor([1000.0, 2000.0]))
    snn = snnbridge.convert(_identity_relu_net(2), [{"robustnorm": {"percentile": 99.9, "channelwise": True}}],
                            calibration=data, timesteps=4, progress=False)
    torch.testing.assert_close(_threshold(snn), torch.tensor([999.0, 1998.0]))


def test_robustnorm_nonzero_option_ignores_zeros():
    data = [torch.cat([torch.zeros(1000, 1), torch.arange(1, 101, dtype=torch.float32).view(-1, 1)])]
    snn = snnbridge.convert(_identity_relu_net(), [{"robustnorm": {"percentile": 50.0}}], calibration=data,
                            timesteps=4, progress=False)
    assert _threshold(snn) == 1.0  # the median is 0 -> a dead site gets the fallback threshold 1.0
    assert any("never activated" in n for n in snn.report["notes"])
    snn = snnbridge.convert(_identity_relu_net(), [{"robustnorm": {"percentile": 50.0, "nonzero": True}}],
                            calibration=data, timesteps=4, progress=False)
    assert _threshold(snn) == pytest.approx(50.5)


def test_g14_diehl_weight_scaling_equals_threshold_form():
    """W1/4, b1/4, 2*W2, b2/2 with threshold 1 gives the same spikes as thresholds 4 and 2 (lambda0 = 1)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    scaled = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        scaled[0].weight.copy_(net[0].weight / 4)
        scaled[0].bias.copy_(net[0].bias / 4)
        scaled[2].weight.copy_(net[2].weight * 4 / 2)
        scaled[2].bias.copy_(net[2].bias / 2)
        scaled[4].weight.copy_(net[4].weight * 2)
        scaled[4].bias.copy_(net[4].bias)
    x = torch.rand(16, 6) * 4
    thr = snnbridge.convert(net, [fixed_threshold("lam", {"1": 4.0, "3": 2.0})], example_input=x, timesteps=16,
                            progress=False)
    one = snnbridge.convert(scaled, [fixed_threshold("one", 1.0)], example_input=x, timesteps=16, progress=False)
    spikes = {}
    for tag, snn in (("thr", thr), ("one", one)):
        with snn.record() as rec:
            spikes[(tag, "out")] = snn(x)
        spikes.update({(tag, name): rec[name].spikes for name in snn.sites})
    for site in ("1", "3"):
        assert torch.equal(spikes[("thr", site)], spikes[("one", site)])
        assert spikes[("thr", site)].sum() > 0
    torch.testing.assert_close(spikes[("thr", "out")], spikes[("one", "out")], rtol=1e-5, atol=1e-5)
