"""Binary spikes (``fold_scales``): threshold 1, 0/1 spikes, the unfolded SNN's output, clear refusals.

Equality is checked in float64 (the SNN converted in float32, then ``.double()``, then folded),
so a difference is a wrong fold, not rounding; spikes must be identical, outputs equal to
rounding. Hand-worked weights check the fold itself on a two-layer network.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers import zoo
from snnbridge import InputError, NeuronSpec, SiteCorrection
from snnbridge.folding import fold_in_place
from snnbridge.plugins.qcfs import QCFS

BACKENDS = ["torch", "spikingjelly", "snntorch"]
T = 4


class ProjNet(nn.Module):
    """Every rule of the fold in one small net (3x8x8 inputs).

    conv-BN-ReLU; a residual block with a 1x1 projection shortcut and a BatchNorm kept after the
    add; a grouped conv; a channel cat of two branches; avg-pool + flatten concatenated with a
    global mean; FC-ReLU; FC.
    """

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3, self.proj, self.bn3 = nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(6, 8, 1), nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 3, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(7 * 4 * 4 + 7, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        y = F.relu(self.c2(x))
        x = F.relu(self.bn3(self.c3(y) + self.proj(x)))
        x = F.relu(self.grouped(x))
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        h = torch.cat([self.pool(x).flatten(1), x.mean((2, 3))], 1)
        return self.fc2(F.relu(self.fc1(h)))


def proj_net() -> nn.Module:
    torch.manual_seed(0)
    return zoo.randomize_bn(ProjNet()).eval()


def qcfs_net() -> nn.Module:
    prepared = snnbridge.prepare(proj_net(), [{"qcfs": {"levels": 4}}])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in prepared.modules():
            if isinstance(m, QCFS):
                m.lam.fill_(float(torch.rand((), generator=g)) * 0.8 + 0.3)
    return prepared.eval()


def data(n=2, batch=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, 8, 8, generator=g) for _ in range(n)]


X = data(1, 4, seed=2)[0]

RECIPES = {
    "maxnorm": (proj_net, ["maxnorm"]),
    "robustnorm": (proj_net, [{"robustnorm": {"percentile": 99.9, "channelwise": True}}]),
    "opi": (proj_net, [{"robustnorm": {"channelwise": True}}, "opi"]),
    "snn_calibration": (proj_net, [{"snn_calibration": {"samples": 16, "threshold_batches": 1, "grid": 20}}]),
    "ftbc": (proj_net, [{"robustnorm": {"channelwise": True}}, {"ftbc": {"batches": 1, "iterations": 1}}]),
    "ltb": (proj_net, [{"ltb": {"iterations": 2, "delay_margin": 2}}]),
    "qcfs": (qcfs_net, ["qcfs"]),
    "cos": (qcfs_net, ["qcfs", {"cos": {"rho": 2}}]),
    "srp": (qcfs_net, ["qcfs", {"srp": {"tau": 2}}]),
    "cos+srp": (qcfs_net, ["qcfs", {"cos": {"rho": 2}}, {"srp": {"tau": 2}}]),
}


def convert(model, recipe, backend="torch", **kw):
    return snnbridge.convert(model, recipe, calibration=data(), backend=backend, timesteps=T, progress=False, **kw)


def spikes_of(snn, x):
    rec = snnbridge.record(snn, x, what=("spikes", "output"))
    return {n: r["spikes"] for n, r in rec.items()}, {n: r["output"] for n, r in rec.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label", list(RECIPES))
def test_folded_equals_unfolded_in_float64(label, backend):
    make, recipe = RECIPES[label]
    snn = convert(make(), recipe, backend)
    snn64 = copy.deepcopy(snn).double()
    before = {k: v.clone() for k, v in snn64.state_dict().items()}
    specs_before = {n: s.describe() for n, s in snn64.specs.items()}
    folded = snnbridge.fold_scales(snn64)
    x = X.double()
    assert snnbridge.is_folded(folded) and not snnbridge.is_folded(snn64)
    assert all(s.threshold == 1.0 for s in folded.specs.values())
    s_ref, _ = spikes_of(snn64, x)
    s_fold, out_fold = spikes_of(folded, x)
    for name in s_ref:
        assert torch.equal(s_ref[name], s_fold[name]), name  # the same spikes, step by step
        assert set(s_fold[name].unique().tolist()) <= {0.0, 1.0} and set(out_fold[name].unique().tolist()) <= {0.0, 1.0}
        if "srp" not in label:  # what a site passes on is its 0/1 spikes (srp: times its 0/1 masks)
            assert torch.equal(out_fold[name], s_fold[name]), name
    assert sum(float(s.sum()) for s in s_fold.values()) > 0  # the net spikes at all
    ref, out = snn64(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max())), (out - ref).abs().max()
    # the unfolded SNN is untouched
    assert all(torch.equal(v, before[k]) for k, v in snn64.state_dict().items())
    assert {n: s.describe() for n, s in snn64.specs.items()} == specs_before
    assert folded.steps_run == snn64.steps_run and folded.decode_window == snn64.decode_window


def test_convert_option_folds_after_every_correction(tmp_path):
    model = qcfs_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = ["qcfs", {"cos": {"rho": 2}}, {"srp": {"tau": 2}}]
    folded = convert(model, recipe, fold_scales=True)
    plain = convert(model, recipe)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the user's model is untouched
    assert snnbridge.is_folded(folded) and folded.report["fold_scales"]["sites"].keys() == plain.specs.keys()
    assert torch.equal(folded(X), snnbridge.fold_scales(plain)(X))  # the same fold, after the corrections
    assert torch.allclose(folded(X), plain(X), atol=1e-5)
    # a saved folded SNN loads folded, with the same outputs (corrections and their classes kept)
    path = snnbridge.save(folded, tmp_path / "folded.pt")
    loaded = snnbridge.load(path, model=qcfs_net())
    assert snnbridge.is_folded(loaded) and torch.equal(loaded(X), folded(X))
    assert [type(c) for c in loaded.sites[next(iter(loaded.sites))].corrections] == \
        [type(c) for c in folded.sites[next(iter(folded.sites))].corrections]
    with pytest.raises(InputError, match="fold_scales must be True or False"):
        convert(model, recipe, fold_scales="yes")


def test_hand_worked_fold_of_two_linear_layers():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        net[0].bias.copy_(torch.tensor([0.5, 0.25]))
        net[2].weight.copy_(torch.tensor([[4.0, -2.0]]))
        net[2].bias.copy_(torch.tensor([0.125]))
    snn = snnbridge.convert(net, ["maxnorm"], calibration=[torch.rand(8, 2)], timesteps=4, progress=False)
    (name,) = snn.sites
    snn.set_spec(name, NeuronSpec(threshold=torch.tensor([2.0, 0.5]), v0=torch.tensor([1.0, 0.125]),
                                  step_bias=torch.tensor([0.5, 0.0, 0.25, 0.0])))
    folded = snnbridge.fold_scales(snn)
    first, second = [m for m in folded.graph_module.modules() if isinstance(m, nn.Linear)]
    # layer feeding the site: rows divided by theta; consuming layer: columns times theta; head bias unchanged
    assert first.weight.tolist() == [[0.5, 1.0], [6.0, -2.0]] and first.bias.tolist() == [0.25, 0.5]
    assert second.weight.tolist() == [[8.0, -1.0]] and second.bias.tolist() == [0.125]
    spec = folded.specs[name]
    assert spec.threshold == 1.0 and spec.v0.tolist() == [0.5, 0.25]
    # a [T] table under a per-channel threshold becomes a [T, C] table in units of each channel's threshold
    assert spec.step_bias.tolist() == [[0.25, 1.0], [0.0, 0.0], [0.125, 0.5], [0.0, 0.0]]
    x = torch.tensor([[0.3, 0.1], [1.0, 0.5], [0.2, 0.9]])
    assert torch.allclose(folded(x), snn(x), atol=1e-6)
    assert torch.equal(net[0].weight, torch.tensor([[1.0, 2.0], [3.0, -1.0]]))  # the user's model is untouched


def test_constant_bias_under_per_channel_threshold_moves_into_the_feeding_layer():
    snn = convert(proj_net(), [{"robustnorm": {"channelwise": True}}])
    name = next(iter(snn.sites))  # fed by c1 (BN folded): a single Conv can hold the bias
    snn.set_spec(name, snn.specs[name].replace(step_bias=0.05))
    snn64 = copy.deepcopy(snn).double()
    folded = snnbridge.fold_scales(snn64)
    assert folded.specs[name].step_bias is None
    feed, orig = folded.feeding_layer(name), snn64.feeding_layer(name)
    th = snn64.specs[name].threshold.double()
    assert torch.allclose(feed.layer.bias, (orig.layer.bias + 0.05) / th, rtol=1e-12)
    x = X.double()
    assert torch.allclose(folded(x), snn64(x), rtol=1e-9, atol=1e-9)


class _AbsoluteShift(SiteCorrection):
    """A correction in absolute potential units (not threshold-relative): folding must refuse it."""

    presim_steps = 1

    def adjust(self, site, record, v0):
        return None


class TwoSites(nn.Module):
    """One conv feeding two sites (directly and through a pool), whose thresholds differ."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8 + 4 * 4 * 4, 2)

    def forward(self, x):
        h = self.c(x)
        a, b = F.relu(h), F.relu(F.avg_pool2d(h, 2) * 3.0)
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], 1))


def test_refusals_name_the_site_and_change_nothing():
    # an identity shortcut carries the spikes of one site into the add of another
    snn = convert(zoo.BNNet().eval(), ["maxnorm"])
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    residual = r"fold_scales: site '[\w.]+' cannot be folded.*residual .*spikes of site '[\w.]+'"
    with pytest.raises(InputError, match=residual):
        snnbridge.fold_scales(snn)
    with pytest.raises(InputError, match="residual"):
        fold_in_place(snn)  # checks everything before changing anything
    assert all(torch.equal(v, before[k]) for k, v in snn.state_dict().items())
    assert not snnbridge.is_folded(snn)
    with pytest.raises(InputError, match="residual"):
        convert(zoo.BNNet().eval(), ["maxnorm"], fold_scales=True)
    # a site on the network's input: nothing before it can take its threshold
    with pytest.raises(InputError, match="unscaled values"):
        snnbridge.fold_scales(snnbridge.convert(zoo.relu_head(3), ["maxnorm"], calibration=[torch.rand(8, 3)],
                                                timesteps=2, progress=False))
    # a network that ends in neurons has no analog layer to absorb the last threshold
    ends = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).eval()
    with pytest.raises(InputError, match="network's output"):
        snnbridge.fold_scales(snnbridge.convert(ends, ["maxnorm"], calibration=[torch.rand(8, 3)], timesteps=2,
                                                progress=False))
    # one layer feeding two sites whose thresholds differ
    two = snnbridge.convert(TwoSites().eval(), ["maxnorm"], calibration=data(), timesteps=2, progress=False)
    assert len(set(s.threshold for s in two.specs.values())) == 2
    with pytest.raises(InputError, match=r"layer 'c' feeds site '[\w.]+'.*and site '[\w.]+'"):
        snnbridge.fold_scales(two)
    # a per-input correction that does not say it is threshold-relative
    snn = convert(proj_net(), ["maxnorm"])
    site = next(iter(snn.sites))
    snn.sites[site].corrections.append(_AbsoluteShift())
    with pytest.raises(InputError, match=f"site '{site}'.*_AbsoluteShift.*threshold_relative"):
        snnbridge.fold_scales(snn)
    with pytest.raises(InputError, match="SpikingModel"):
        snnbridge.fold_scales(proj_net())
