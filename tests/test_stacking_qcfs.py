"""Stacks of the QCFS family: COS + SRP on one shared warm-up, a QCFS network trained in the test, cross-backend
identity of every stack, and the refused combinations."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers.qcfs_family import BACKENDS, qcfs_mlp, reference_srp

# -- COS + SRP semantics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_cos_and_srp_share_one_warmup(backend):
    """One network warm-up of max(rho, tau) steps from the base v0; at its end each site gets SRP's mask from
    v(tau) and COS's v0 shift from the first rho steps of the same record; the T counted steps start from the
    shifted v0 with the masks applied."""
    net = qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels=4, seed=3)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(7)) * 2
    for rho, tau, T in ((4, 4, 6), (2, 4, 3), (4, 2, 1)):
        warm = max(rho, tau)
        for recipe in (["qcfs", {"cos": {"rho": rho}}, {"srp": {"tau": tau}}],
                       ["qcfs", {"srp": {"tau": tau}}, {"cos": {"rho": rho}}]):
            snn = snnbridge.convert(net, recipe, example_input=x[:2], timesteps=T, backend=backend, progress=False)
            assert snn.warmup == warm and snn.lookahead == 0 and snn.steps_run == warm + T
            with torch.no_grad():
                got = snn.sweep(x)
            want = reference_srp(net, x, T, tau, cos_rho=rho)  # rho > tau: SRP reads v(tau) inside the warm-up
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            torch.testing.assert_close(snn(x), got[-1])


# -- a QCFS network trained in the test --------------------------------------------------------------------

K, D = 8, 16


def _data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(K, D, generator=g) * 0.8
    y = torch.randint(0, K, (4400,), generator=g)
    x = centers[y] + torch.randn(4400, D, generator=g)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _mlp():
    return nn.Sequential(nn.Linear(D, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(),
                         nn.Linear(48, K))


def _train(model, xtr, ytr, steps=300):
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, xtr.shape[0], (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    xtr, ytr, xte, yte = _data()
    torch.manual_seed(0)
    options = [{"qcfs": {"levels": 4, "lambda_init": 2.0}}]
    qcfs = _train(snnbridge.prepare(_mlp(), options), xtr, ytr)
    path = tmp_path_factory.mktemp("ckpt") / "qcfs.pt"
    torch.save(qcfs.state_dict(), path)
    loaded = snnbridge.prepare(_mlp(), options)  # checkpoint round trip: prepare -> load -> convert
    loaded.load_state_dict(torch.load(path))
    torch.manual_seed(0)
    relu = _train(_mlp(), xtr, ytr)
    torch.manual_seed(0)
    clip = _train(snnbridge.prepare(_mlp(), [{"clipshift": {"y_th": 2.0}}]), xtr, ytr)
    return {"qcfs": loaded.eval(), "relu": relu, "clipshift": clip, "data": (xtr, xte, yte)}


def _curve(snn, x, T):
    with torch.no_grad():
        # COS's look-ahead needs 4 counted inputs: read T < 4 from a sweep
        return snn.sweep(x, timesteps=max(T, 4))[T - 1]


def test_trained_qcfs_network_cos_and_srp_do_not_reduce_accuracy(trained):
    """At T = 2 and 4, COS, SRP and both bring the SNN's output closer to the QCFS ANN's (mean absolute error) and do
    not reduce accuracy: at least the lower of (QCFS alone, ANN), up to two test samples. (At T = rho = L = 4 COS
    reproduces the ANN exactly, so it cannot beat an SNN that is luckily above its ANN.)"""
    net = trained["qcfs"]
    _, xte, yte = trained["data"]
    with torch.no_grad():
        ann_out = net(xte)
    ann = float((ann_out.argmax(1) == yte).float().mean())
    assert ann > 0.8
    tol = 2 / len(yte)
    acc, err = {}, {}
    for T in (2, 4):
        for name, recipe in (("qcfs", ["qcfs"]), ("cos", ["qcfs", "cos"]), ("srp", ["qcfs", "srp"]),
                             ("cos+srp", ["qcfs", "cos", "srp"])):
            snn = snnbridge.convert(net, recipe, example_input=xte[:2], timesteps=T, progress=False)
            out = _curve(snn, xte, T)
            acc[name, T] = float((out.argmax(1) == yte).float().mean())
            err[name, T] = float((out - ann_out).abs().mean())
        for name in ("cos", "srp", "cos+srp"):
            assert err[name, T] < err["qcfs", T], (name, T, err)
            assert acc[name, T] >= min(acc["qcfs", T], ann) - tol, (name, T, acc)
    print("ANN", ann, {f"{k[0]}@T={k[1]}": (round(v, 4), round(err[k], 4)) for k, v in acc.items()})
    assert acc["qcfs", 4] > ann - 0.05
    assert err["cos", 4] < 0.02 * err["qcfs", 4]  # rho = T = L: (almost) every offset spike is calibrated away


STACKS = [("qcfs", ["qcfs", "cos"]), ("qcfs", ["qcfs", "srp"]), ("qcfs", ["qcfs", "opi"]),
          ("relu", ["maxnorm", "opi"]), ("clipshift", ["clipshift"]), ("qcfs", ["qcfs", "cos", "srp"]),
          ("qcfs", ["qcfs", {"opi": {"fraction": 0.0}}])]


@pytest.mark.parametrize("model, recipe", STACKS, ids=["+".join(r if isinstance(r, str) else next(iter(r))
                                                               for r in rec) for _, rec in STACKS])
def test_every_stack_is_identical_on_every_backend(trained, model, recipe):
    net = trained[model]
    xtr, xte, _ = trained["data"]
    x = xte[:200]
    calib = [xtr[:256]]
    outs = {}
    for backend in BACKENDS:
        snn = snnbridge.convert(net, recipe, calibration=calib, timesteps=6, backend=backend, progress=False)
        with torch.no_grad():
            outs[backend] = snn.sweep(x)
        assert snn.steps_run == snn.warmup + snn.lookahead + 6
    ref = outs["torch"]
    for backend, out in outs.items():
        assert torch.equal(out, ref), backend


# -- refused combinations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, error, words", [
    (["qcfs", "maxnorm"], snnbridge.PluginConflictError, ("qcfs", "maxnorm", "threshold")),
    (["qcfs", "clipshift"], snnbridge.PluginConflictError, ("qcfs", "clipshift")),
    (["clipshift", "opi"], snnbridge.PluginConflictError, ("opi", "clipshift")),
    (["maxnorm", "cos"], snnbridge.MissingRequirementError, ("cos", "qcfs")),
    (["maxnorm", "srp"], snnbridge.MissingRequirementError, ("srp", "qcfs")),
    (["maxnorm", "cos", "srp"], snnbridge.MissingRequirementError, ("cos", "qcfs")),
    (["srp", "qcfs"], snnbridge.PluginConflictError, ("srp", "qcfs")),
    (["qcfs", "opi", "opi"], snnbridge.PluginConflictError, ("opi",)),
])
def test_conflicts_are_refused_before_any_work_naming_both(recipe, error, words):
    with pytest.raises(error) as info:
        snnbridge.convert("not a model", recipe, timesteps=4)  # the model would fail later: validation comes first
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("extra", ["snn_calibration", "ftbc"])
def test_t_specific_corrections_stack_on_cos_below_its_rho(extra):
    """qcfs + cos (rho 4) + a T-specific correction at T = 1, 2: the calibration runs rho steps and reads the first
    T, so the SNN converts and its output is the prefix of its own longer run."""
    net = qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels=4, seed=1)
    g = torch.Generator().manual_seed(4)
    calib = [torch.randn(32, 6, generator=g) * 2 for _ in range(4)]
    x = torch.randn(16, 6, generator=g)
    for T in (1, 2):
        snn = snnbridge.convert(net, ["qcfs", {"cos": {"rho": 4}}, extra], calibration=calib, timesteps=T,
                                progress=False)
        assert snn.steps_run == 4 + 4
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", snnbridge.TimestepMismatchWarning)  # read at 4: a longer run
            torch.testing.assert_close(snn(x), snn.sweep(x, 4)[T - 1])
