"""torchvision resnet18 / vgg11_bn / mobilenet_v2 (random weights) convert and run."""

from __future__ import annotations

import pytest
import torch
import torchvision

import snnbridge


@pytest.mark.parametrize("factory,expect", [
    (torchvision.models.resnet18, {"sites": 17, "pre_neuron_maxpool": 1, "T": 16}),
    (torchvision.models.vgg11_bn, {"sites": 10, "pre_neuron_maxpool": 5, "T": 16}),
    (torchvision.models.mobilenet_v2, {"sites": 35, "pre_neuron_maxpool": 0, "T": 64}),
])
def test_torchvision_models_convert_and_run(factory, expect):
    torch.manual_seed(0)
    model = factory(num_classes=10).eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(4, 3, 32, 32, generator=g)]
    snn = snnbridge.convert(model, [{"robustnorm": {"percentile": 99.9}}], calibration=data, timesteps=expect["T"],
                            progress=False)
    assert len(snn.sites) == expect["sites"]
    assert len(snn.report["graph"]["pre_neuron_maxpool"]) == expect["pre_neuron_maxpool"]
    assert snn.report["graph"]["kept_bn"] == []  # every BN of these models folds
    with torch.no_grad():
        out = snn(data[0][:2])
        ann = model(data[0][:2])
    assert out.shape == ann.shape == (2, 10)
    assert torch.isfinite(out).all()
    # the network really spikes at the first and the last site (enough steps for spikes to reach the deepest
    # layer: 35 sites deep for mobilenet_v2)
    ends = (next(iter(snn.sites)), list(snn.sites)[-1])
    with snn.record(ends) as rec:
        snn(data[0][:2])
    rates = {name: rec[name].spikes.mean().item() for name in ends}
    assert all(r > 0 for r in rates.values()), rates


def test_unsupported_ops_are_grouped_with_one_rewrite_each():
    """mobilenet_v3_small: Hardswish, Hardsigmoid and SE products, each named once with where it occurs."""
    with pytest.raises(snnbridge.UnsupportedModelError) as err:
        snnbridge.trace_for_conversion(torchvision.models.mobilenet_v3_small())
    msg = str(err.value)
    lines = [line for line in msg.splitlines() if line.startswith("  - ")]
    assert len(lines) == 3, msg
    assert "of 3 kind(s)" in msg and "Hardswish (19x: features.0.2" in msg and "and 15 more" in msg
    hardsigmoid = next(line for line in lines if "Hardsigmoid" in line)
    assert "Hardtanh(0, 1)" in hardsigmoid and "sigmoid is not piecewise" not in hardsigmoid  # no substring mix-up
    assert any("mul of two signals" in line and "squeeze-and-excitation" in line for line in lines)


class _Normalised(torch.nn.Module):
    """Normalisation inside the model, from buffers (what pixel-space attacks need)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def test_normalisation_by_buffers_is_a_constant_not_a_second_signal():
    """(x - mean) / std with buffers converts; the SNN equals the one of the bare model on normalised inputs."""
    torch.manual_seed(0)
    bare = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).eval()
    wrapped = _Normalised(bare).eval()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    norm = (x - wrapped.mean) / wrapped.std
    a = snnbridge.convert(wrapped, ["maxnorm"], calibration=[x], timesteps=8, progress=False)
    b = snnbridge.convert(bare, ["maxnorm"], calibration=[norm], timesteps=8, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(norm))
    # a genuine product of two signals is still refused
    with pytest.raises(snnbridge.UnsupportedModelError, match="truediv of two signals"):
        snnbridge.trace_for_conversion(_SelfDivide())


class _SelfDivide(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) / (x.abs() + 1)
