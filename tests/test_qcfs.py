"""QCFS plugin: golden facts G1, G2, G3, G5 through the public API, the conversion theorem, checkpoints, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers.qcfs_family import BACKENDS, one_site, qcfs_mlp, spike_counts
from snnbridge.plugins.qcfs import QCFS

# -- G1, G2: the activation ------------------------------------------------------------------------------


def test_g1_forward():
    h = QCFS(levels=4, lambda_init=1.0)
    z = torch.tensor([-0.2, 0, 0.1, 0.124, 0.125, 0.2, 0.375, 0.5, 0.874, 0.875, 1.0, 1.5])
    want = [0, 0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert h(z).tolist() == pytest.approx(want, abs=1e-7)
    h2 = QCFS(levels=8, lambda_init=2.0)
    assert h2(torch.tensor([0.3, 1.0, 1.9])).tolist() == pytest.approx([0.25, 1.0, 2.0], abs=1e-7)


@pytest.mark.parametrize("z, h, dz, dlam", [(0.3, 0.25, 1.0, -0.05), (0.9, 1.0, 1.0, 0.1), (1.2, 1.0, 0.0, 1.0),
                                            (-0.1, 0.0, 0.0, 0.0)])
def test_g2_gradients_clamp_then_floor(z, h, dz, dlam):
    act = QCFS(levels=4, lambda_init=1.0).double()
    x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    y = act(x)
    y.backward()
    assert float(y.detach()) == pytest.approx(h, abs=1e-12)
    assert float(x.grad) == pytest.approx(dz, abs=1e-12)
    assert float(act.lam.grad) == pytest.approx(dlam, abs=1e-12)


# -- prepare ------------------------------------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.six = nn.ReLU6()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(self.act(self.c1(x)))           # ReLU module, then a max-pool
        x = self.six(self.act(self.c2(x)))            # the same ReLU module a second time, then ReLU6
        return self.fc(F.relu(x).flatten(1))          # functional relu


def test_prepare_swaps_every_activation_call_site_and_keeps_pooling():
    model = Mixed()
    prepared = snnbridge.prepare(model, [{"qcfs": {"levels": 4, "lambda_init": 3.0}}])
    acts = [m for m in prepared.modules() if isinstance(m, QCFS)]
    assert len(acts) == 4 and len({id(a) for a in acts}) == 4
    assert all(a.levels == 4 and float(a.lam.detach()) == 3.0 and a.shift == 0.5 for a in acts)
    assert any(isinstance(m, nn.MaxPool2d) for m in prepared.modules())  # pooling is the user's choice
    assert not any(isinstance(m, QCFS) for m in model.modules())
    x = torch.rand(2, 3, 8, 8)
    prepared.eval()
    snn = snnbridge.convert(prepared, ["qcfs"], example_input=x, timesteps=4, progress=False)
    assert [s.info.kind for s in snn.sites.values()] == ["qcfs"] * 4
    assert snn.report["graph"]["pre_neuron_maxpool"]  # the max-pool after a QCFS site pools currents


# -- conversion ---------------------------------------------------------------------------------------------


def test_conversion_theta_is_lambda_and_v0_is_phi_theta():
    prepared = qcfs_mlp(lams=(2.0, 0.5))
    snn = snnbridge.convert(prepared, ["qcfs"], example_input=torch.rand(2, 6), timesteps=4, progress=False)
    assert [s.threshold for s in snn.specs.values()] == [2.0, 0.5]
    assert [s.v0 for s in snn.specs.values()] == [1.0, 0.25]
    assert all(s.step_bias is None for s in snn.specs.values())
    zero = qcfs_mlp(lams=(2.0, 0.5), shift=0.0)  # trained with phi = 0: the SNN starts at 0
    snn0 = snnbridge.convert(zero, ["qcfs"], example_input=torch.rand(2, 6), timesteps=4, progress=False)
    assert [s.v0 for s in snn0.specs.values()] == [0.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_g5_closed_form_spike_counts(backend):
    cases = [(1.0, 8, [-0.2, 0, 0.0625, 0.3, 0.5, 0.99, 1.0, 1.7], [0, 0, 1, 2, 4, 8, 8, 8]),
             (2.0, 4, [0.24, 0.25, 0.26, 0.75, 1.0, 1.74, 1.76, 3.0], [0, 1, 1, 2, 2, 3, 4, 4]),
             (1.0, 4, [0.125], [1])]  # exact tie m(4) = 1.0: the >= rule fires
    for lam, T, xs, want in cases:
        net = one_site(lam=lam, levels=T)
        x = torch.tensor(xs).view(-1, 1)
        snn = snnbridge.convert(net, ["qcfs"], example_input=x, timesteps=T, backend=backend, progress=False)
        assert snn.specs[next(iter(snn.specs))].v0 == lam / 2
        per_step = snn.run(x)  # [T, B, 1] weighted spikes theta * s(t)
        assert (per_step.sum(0).view(-1) / lam).tolist() == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_g3_expected_error_of_the_closed_form(backend):
    """E[r_T - h_L] = (phi - 1/2)(1/T - 1/L) for z uniform on [0, lambda], L = 4 (exact on a fine grid)."""
    L, n = 4, 960  # 960 cells: every break point (k - phi)/T, (k - phi)/L is a grid boundary -> exact mean
    z = ((torch.arange(n, dtype=torch.float32) + 0.5) / n).view(-1, 1)
    expected = {(0.0, 8): 0.0625, (0.0, 2): -0.125, (0.0, 3): -0.041667, (0.0, 16): 0.09375}
    for phi in (0.0, 0.5):
        net = one_site(lam=1.0, levels=L, shift=phi)
        recipe = ["qcfs", {"opi": {"fraction": phi}}] if phi == 0.0 else ["qcfs"]
        with torch.no_grad():
            ann = net(z)
        for T in (2, 3, 8, 16):
            snn = snnbridge.convert(net, recipe, example_input=z, timesteps=T, backend=backend, progress=False)
            with torch.no_grad():
                err = float((snn(z) - ann).double().mean())
            assert err == pytest.approx((phi - 0.5) * (1 / T - 1 / L), abs=2e-6)
            if phi == 0.0:
                assert err == pytest.approx(expected[(phi, T)], abs=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_theorem_network_of_qcfs_layers_at_T_equal_L(backend):
    """A network of QCFS layers converted with T = L: every site's mean error (SNN rate - QCFS output) over
    random inputs is ~0 and so is the output's; with phi = 0 (trained with shift 0, opi fraction 0) the first
    site's bias follows G3 (0 at T = L, +lambda/(4L) at T = 2L), while an SNN starting at 0 under a phi = 1/2
    network is off by -lambda/(2T) there."""
    L = 4
    lams = (1.0, 2.0, 1.0)
    net = qcfs_mlp(widths=(16, 16, 24, 24, 5), lams=lams, levels=L, seed=0)
    with torch.no_grad():  # the first layer passes x through unchanged, so the first site sees z uniform on [0, 1]
        first = net.get_submodule("0")
        first.weight.copy_(torch.eye(16))
        first.bias.zero_()
    x = torch.rand(512, 16, generator=torch.Generator().manual_seed(7))

    def site_errors(model, recipe, T):
        snn = snnbridge.convert(model, recipe, example_input=x[:2], timesteps=T, backend=backend, progress=False)
        acts = []
        hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o)) for m in model.modules()
                 if isinstance(m, QCFS)]
        with torch.no_grad():
            ann = model(x)
            out, spikes = spike_counts(snn, x)
        for h in hooks:
            h.remove()
        rates = [spikes[n].mean(0) * snn.specs[n].threshold for n in spikes]
        return [float((r - a).mean()) for r, a in zip(rates, acts)], out.mean(0) - ann, ann

    errs, out_err, ann = site_errors(net, ["qcfs"], L)
    assert errs[0] == pytest.approx(0.0, abs=1e-6)  # constant input: the closed form is the QCFS staircase
    for e, lam in zip(errs, lams):
        assert abs(e) < 0.1 * lam / L  # below a tenth of one quantization step (unevenness only)
    assert abs(float(out_err.mean())) < 0.06 * float(ann.std())

    errs_floor, _, _ = site_errors(net, ["qcfs", {"opi": {"fraction": 0.0}}], L)
    assert errs_floor[0] == pytest.approx(-lams[0] / (2 * L), abs=0.01)

    zero = qcfs_mlp(widths=(16, 16, 24, 24, 5), lams=lams, levels=L, shift=0.0)
    zero.load_state_dict(net.state_dict())
    for T, bias in ((L, 0.0), (2 * L, 1 / (4 * L))):
        errs0, _, _ = site_errors(zero, ["qcfs", {"opi": {"fraction": 0.0}}], T)
        assert errs0[0] == pytest.approx(bias * lams[0], abs=0.01)


# -- checkpoints ----------------------------------------------------------------------------------------------


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_checkpoint_round_trip_prepare_train_save_load_convert(tmp_path):
    torch.manual_seed(0)
    options = [{"qcfs": {"levels": 4, "lambda_init": 2.0}}]
    prepared = snnbridge.prepare(Small(), options)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 3, (64,))
    prepared.train()
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(prepared(x), y).backward()
        opt.step()
    lams = [float(m.lam.detach()) for m in prepared.modules() if isinstance(m, QCFS)]
    assert len(lams) == 2 and lams != [2.0, 2.0]
    torch.save(prepared.state_dict(), tmp_path / "qcfs.pt")

    again = snnbridge.prepare(Small(), options)
    again.load_state_dict(torch.load(tmp_path / "qcfs.pt"))
    again.eval()
    snn = snnbridge.convert(again, ["qcfs"], calibration=[x[:16]], timesteps=4, progress=False)  # T = L
    assert [s.threshold for s in snn.specs.values()] == pytest.approx(lams)
    assert [s.v0 for s in snn.specs.values()] == pytest.approx([lam / 2 for lam in lams])
    prepared.eval()
    with torch.no_grad():
        ann = again(x)
        torch.testing.assert_close(ann, prepared(x))
        err = (snn(x) - ann).abs().mean() / ann.abs().mean()
        print("relative error at T = L:", float(err))
    assert err < 0.1


# -- errors ------------------------------------------------------------------------------------------------------


def test_lambda_not_positive_is_a_clear_error():
    net = qcfs_mlp(lams=(2.0, -0.25))
    with pytest.raises(snnbridge.InputError, match=r"site 'act_3' has a QCFS threshold lambda = -0.25"):
        snnbridge.convert(net, ["qcfs"], example_input=torch.rand(2, 6), timesteps=4, progress=False)


def test_plain_relu_network_is_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(snnbridge.MissingRequirementError, match=r"snnbridge.prepare\(model, \['qcfs'\]\)"):
        snnbridge.convert(net, ["qcfs"], example_input=torch.rand(2, 4), timesteps=4, progress=False)


def test_two_threshold_sources_are_refused_before_any_work():
    with pytest.raises(snnbridge.PluginConflictError, match=r"'qcfs' and 'maxnorm' both provide 'threshold'"):
        snnbridge.convert("not a model", ["qcfs", "maxnorm"], timesteps=4)


def test_options_are_validated():
    with pytest.raises(snnbridge.OptionError, match="shift"):
        snnbridge.prepare(nn.Sequential(nn.ReLU()), [{"qcfs": {"shift": 1.0}}])
    with pytest.raises(snnbridge.OptionError, match="levels"):
        snnbridge.prepare(nn.Sequential(nn.ReLU()), [{"qcfs": {"levels": 0}}])
