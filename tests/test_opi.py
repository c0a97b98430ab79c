"""opi plugin: golden fact G4 on every backend, any threshold source, overriding QCFS's base v0, conflicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from helpers.qcfs_family import BACKENDS, qcfs_mlp


@pytest.mark.parametrize("backend", BACKENDS)
def test_g4_optimal_initial_potential(backend):
    """z uniform over whole quantization cells (no clipping), theta = 1, T = 4: E[q - z] = (phi - 1/2) Delta and
    E[(q - z)^2] = Delta^2 ((1 - phi)^3 + phi^3) / 3."""
    T, n = 4, 1600
    z = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).float().view(-1, 1)  # [0, 1): 4 whole cells
    relu = nn.Sequential(nn.ReLU())
    calib = [torch.tensor([[0.2], [1.0]])]  # max-norm threshold 1.0
    want = {0.0: (-0.125, 0.0208333), 0.25: (-0.0625, 0.0091146), 0.5: (0.0, 0.0052083)}
    for phi, (mean, sq) in want.items():
        snn = snnbridge.convert(relu, ["maxnorm", {"opi": {"fraction": phi}}], calibration=calib, timesteps=T,
                                backend=backend, progress=False)
        assert next(iter(snn.specs.values())).v0 == phi
        with torch.no_grad():
            e = (snn(z) - z).double()
        assert float(e.mean()) == pytest.approx(mean, abs=1e-6)
        assert float((e ** 2).mean()) == pytest.approx(sq, abs=1e-6)
        delta = 1 / T
        assert float((e ** 2).mean()) == pytest.approx(delta ** 2 * ((1 - phi) ** 3 + phi ** 3) / 3, abs=1e-6)


def test_per_channel_threshold_gives_per_channel_v0():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    data = [torch.randn(32, 3)]
    snn = snnbridge.convert(net, [{"maxnorm": {"channelwise": True}}, {"opi": {"fraction": 0.25}}], calibration=data,
                            timesteps=4, progress=False)
    spec = next(iter(snn.specs.values()))
    torch.testing.assert_close(spec.v0, 0.25 * spec.threshold)


def test_opi_overrides_the_qcfs_base_v0_in_any_order():
    net = qcfs_mlp(lams=(2.0, 0.5))
    x = torch.rand(2, 6)
    base = snnbridge.convert(net, ["qcfs"], example_input=x, timesteps=4, progress=False)
    assert [s.v0 for s in base.specs.values()] == [1.0, 0.25]
    for recipe in (["qcfs", {"opi": {"fraction": 0.0}}], [{"opi": {"fraction": 0.0}}, "qcfs"]):
        snn = snnbridge.convert(net, recipe, example_input=x, timesteps=4, progress=False)
        assert [s.v0 for s in snn.specs.values()] == [0.0, 0.0]
    snn = snnbridge.convert(net, ["qcfs", "opi"], example_input=x, timesteps=4, progress=False)
    assert [s.v0 for s in snn.specs.values()] == [1.0, 0.25]


def test_conflicts_are_refused_before_any_work():
    with pytest.raises(snnbridge.PluginConflictError, match=r"'opi' cannot be combined with 'clipshift'.*step_shift"):
        snnbridge.convert("not a model", ["clipshift", "opi"], timesteps=4)
    with pytest.raises(snnbridge.OptionError, match="fraction"):
        snnbridge.build_recipe(["maxnorm", {"opi": {"fraction": 1.5}}])
