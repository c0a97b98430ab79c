"""snnbridge.robustness: FGSM, PGD and uniform noise on a trained tiny net and its SNN; worst case over surrogates.

The task: 64 "pixels" in [0, 1], 4 classes given by a random linear teacher; a 64-32-4 MLP
trained for 150 full-batch Adam steps (about half a second) reaches about 90 % on held-out
samples. Its hidden layer is rescaled so that its largest activation on the calibration batch is
1 (same function: ReLU is positively homogeneous), so the max-norm SNN has threshold 1 and
SpikingJelly's default surrogate (Sigmoid, alpha = 4, on v - threshold) is not narrow against it.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from snnbridge import InputError, robustness
from snnbridge.robustness import fgsm, pgd, uniform_noise

D, K = 64, 4
EPS = (0.02, 0.05, 0.1)


def _task():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(K, D, generator=g)
    x = torch.rand(1200, D, generator=g)
    y = ((x - 0.5) @ teacher.T).argmax(1)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def _mlp(scale_hidden: bool = True) -> nn.Module:
    """The trained MLP (a fresh copy each call; trained once per test session)."""
    return copy.deepcopy(_trained(scale_hidden))


@functools.cache
def _trained(scale_hidden: bool) -> nn.Module:
    xtr, ytr, _, _ = _task()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, K))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(xtr), ytr).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    if scale_hidden:
        with torch.no_grad():
            top = net[1](net[0](xtr[:200])).max()
            net[0].weight /= top
            net[0].bias /= top
            net[2].weight *= top
    return net.eval()


@pytest.fixture(scope="module")
def data():
    _, _, x, y = _task()
    return x, y


@pytest.fixture(scope="module")
def ann():
    return _mlp()


def _snn(net, timesteps=8):
    xtr = _task()[0]
    return snnbridge.convert(net, ["maxnorm"], calibration=[xtr[:200]], backend="spikingjelly", timesteps=timesteps,
                             progress=False)


@pytest.fixture(scope="module")
def snn(ann):
    return _snn(ann)


def _accuracy(model, x, y):
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, m.training) for n, m in model.named_modules()],
            [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()])


def _assert_unchanged(before, model):
    after = _snapshot(model)
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1]
    assert [(n, r) for n, r, _ in before[2]] == [(n, r) for n, r, _ in after[2]]
    assert all(g is None for _, _, g in after[2]), "an attack left .grad on a parameter"


# -- eps = 0, the definition of robust, attack strength ---------------------------------------------------------


class _Refuses(nn.Module):
    def forward(self, x):
        raise AssertionError("an eps=0 attack must not run the model")


def test_eps_zero_returns_x_without_running_the_model(data, snn):
    x, y = data
    for out in (fgsm(_Refuses(), x, y, 0.0), pgd(_Refuses(), x, y, 0), uniform_noise(x, 0.0)):
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    report = robustness.evaluate(snn, (x, y), eps=(0.0, 0.05), progress=False)
    assert all(acc[0] == report.clean_accuracy for acc in report.accuracy.values())
    assert report.clean_accuracy == pytest.approx(_accuracy(snn, x, y), abs=0)
    assert all(acc[1] < report.clean_accuracy for acc in report.accuracy.values())


def test_a_sample_is_robust_only_if_correct_clean_and_attacked(data, ann):
    """An 'attack' that lowers the loss (loss = -CE) fixes misclassified samples: plain accuracy on its output
    exceeds the clean one, robust accuracy cannot."""
    x, y = data
    helping = lambda out, t: -F.cross_entropy(out, t)  # noqa: E731
    clean_ok = ann(x).argmax(1) == y
    helped_ok = ann(fgsm(ann, x, y, 0.1, loss=helping)).argmax(1) == y
    assert helped_ok.float().mean() > clean_ok.float().mean() + 0.05  # the attack really fixes samples
    report = robustness.evaluate(ann, (x, y), eps=0.1, attacks=("fgsm",), loss=helping, progress=False)
    assert report.accuracy["fgsm"][0] == pytest.approx(int((clean_ok & helped_ok).sum()) / len(y), abs=1e-12)
    assert report.accuracy["fgsm"][0] <= report.clean_accuracy
    report = robustness.evaluate(_SurrogateNet(ann), (x, y), eps=0.1, attacks=("fgsm",), loss=helping,
                                 surrogates={"all": "all"}, progress=False)
    assert report.per_surrogate["fgsm"]["all"][0] == int((clean_ok & helped_ok).sum()) / len(y)  # per surrogate too
    # the ordinary attacks, on the SNN and the ANN: counted per sample exactly like this
    for model in (ann, _snn(ann)):
        report = robustness.evaluate(model, (x, y), eps=EPS, attacks=("fgsm",), progress=False)
        ok = model(x).argmax(1) == y
        for e, acc in zip(EPS, report.accuracy["fgsm"]):
            with torch.no_grad():
                attacked = model(fgsm(model, x, y, e)).argmax(1) == y
            assert acc == pytest.approx(int((ok & attacked).sum()) / len(y), abs=1e-12)
            assert acc <= report.clean_accuracy


@pytest.mark.parametrize("which", ["ann", "snn"])
def test_pgd_is_at_least_as_strong_as_fgsm_and_noise_is_weak(which, data, ann, snn):
    """On the trained net with threshold 1 (see the module docstring), PGD (20 steps, default alpha, random start)
    is at least as strong as FGSM at every eps, and uniform noise of the same eps is far weaker than PGD.

    Neither is a theorem. PGD's last iterate is not the best one, and its small steps follow the surrogate
    gradient at points FGSM never visits: on this net converted with threshold ~6, while the SpikingJelly adapter
    still passed gradients through the reset (detach_reset=False), FGSM beat PGD (at eps 0.1: FGSM 40 %,
    PGD 50 % with 7 steps, 41.5 % with 20). Hence threshold 1 and 20 steps.
    """
    x, y = data
    model = ann if which == "ann" else snn
    report = robustness.evaluate(model, (x, y), eps=EPS, steps=20, progress=False)
    clean = report.clean_accuracy
    assert clean > 0.8
    for i, e in enumerate(EPS):
        assert report.accuracy["pgd"][i] <= report.accuracy["fgsm"][i], e
        assert report.accuracy["noise"][i] >= clean - 0.1, e
    assert report.accuracy["noise"][1] - report.accuracy["pgd"][1] > 0.3
    assert report.accuracy["pgd"][2] < 0.1  # eps 0.1 breaks almost every sample


# -- the eps ball, the pixel range, the model ------------------------------------------------------------------


def _edge_batch(data):
    x, y = data
    x = x[:64].clone()
    x[:, :8] = 0.0  # pixels on the range's edges: clamping must keep them inside
    x[:, 8:16] = 1.0
    return x, y[:64]


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "pgd-large-alpha", "pgd-no-start", "noise"])
@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_attacks_stay_in_the_eps_ball_and_the_pixel_range(attack, eps, data, snn):
    x, y = _edge_batch(data)
    g = torch.Generator().manual_seed(3)
    run = {"fgsm": lambda: fgsm(snn, x, y, eps),
           "pgd": lambda: pgd(snn, x, y, eps, generator=g),
           "pgd-large-alpha": lambda: pgd(snn, x, y, eps, alpha=3 * eps, steps=3, generator=g),
           "pgd-no-start": lambda: pgd(snn, x, y, eps, random_start=False),
           "noise": lambda: uniform_noise(x, eps, generator=g)}[attack]
    out = run()
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert (out >= x - eps).all() and (out <= x + eps).all()  # the bounds as computed in x's dtype
    assert (out >= 0).all() and (out <= 1).all()
    moved = (out - x).abs()
    assert moved.max() > 0.5 * eps  # it really perturbs
    if attack in ("fgsm", "pgd-large-alpha"):  # full sign steps end on the ball's faces where the range allows
        inside = (x >= eps) & (x <= 1 - eps)
        assert torch.allclose(moved[inside & (moved > 0)], torch.tensor(eps), atol=1e-6)


def test_without_clamp_the_attack_leaves_the_pixel_range(data, ann):
    x, y = _edge_batch(data)
    out = fgsm(ann, x, y, 0.1, clamp=None)
    assert out.min() < 0 or out.max() > 1
    assert ((out - x).abs() <= 0.1 + 1e-7).all()
    clamped = fgsm(ann, x, y, 0.1)
    assert torch.equal(clamped, out.clamp(0, 1))


def test_pgd_is_reproducible_with_a_generator(data, snn):
    x, y = data
    a = pgd(snn, x, y, 0.05, generator=torch.Generator().manual_seed(1))
    b = pgd(snn, x, y, 0.05, generator=torch.Generator().manual_seed(1))
    c = pgd(snn, x, y, 0.05, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    r1 = robustness.evaluate(snn, (x, y), eps=0.05, seed=5, progress=False)
    r2 = robustness.evaluate(snn, (x, y), eps=0.05, seed=5, progress=False)
    assert r1.accuracy == r2.accuracy


def test_attacks_leave_the_model_as_it_was(data):
    """Mode (a model in training mode is attacked in eval mode: dropout off), weights, requires_grad, no .grad."""
    x, y = data
    net = _mlp()
    model = nn.Sequential(net[0], net[1], nn.Dropout(0.5), net[2]).train()
    model[0].weight.requires_grad_(False)  # a mix of frozen and trainable parameters must stay as it is
    before = _snapshot(model)
    x_before = x.clone()
    a, b = fgsm(model, x, y, 0.05), fgsm(model, x, y, 0.05)
    assert torch.equal(a, b)  # dropout was off during the attack
    pgd(model, x, y, 0.05, steps=3)
    robustness.evaluate(model, (x, y), eps=(0.05,), progress=False)
    _assert_unchanged(before, model)
    assert model.training and model[2].training
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None

    snn = _snn(net).train()
    before = _snapshot(snn)
    robustness.evaluate(snn, (x, y), eps=(0.05,), steps=2, progress=False)
    _assert_unchanged(before, snn)


def test_a_dataloader_and_one_pair_give_the_same_counts(data, snn):
    x, y = data
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    by_batch = robustness.evaluate(snn, loader, eps=EPS, attacks=("fgsm",), progress=True)  # the bar: harmless
    whole = robustness.evaluate(snn, (x, y), eps=EPS, attacks=("fgsm",), progress=False)
    assert by_batch.samples == whole.samples == len(y)
    assert by_batch.clean_accuracy == whole.clean_accuracy
    for u, v in zip(by_batch.accuracy["fgsm"], whole.accuracy["fgsm"]):
        assert abs(u - v) <= 1 / len(y)  # batched float reductions may flip a tie, at most one sample


# -- the report --------------------------------------------------------------------------------------------------


def test_report_json_table_and_plot(data, snn, tmp_path):
    x, y = data
    report = robustness.evaluate(snn, (x, y), eps=(2 / 255, 8 / 255), progress=False)
    d = report.to_dict()
    assert json.loads(report.save_json(tmp_path / "r.json").read_text()) == d
    assert d["eps_labels"] == ["2/255", "8/255"] and set(d["accuracy"]) == {"noise", "fgsm", "pgd"}
    assert d["settings"]["alpha"] == [pytest.approx(2 / 255 * 2.55 / 8), pytest.approx(2.55 / 255)]
    assert d["samples"] == len(y) and 0 <= d["accuracy"]["pgd"][1] <= d["clean_accuracy"]
    text = str(report)
    assert "2/255" in text and "8/255" in text and f"{100 * report.clean_accuracy:.1f}%" in text
    for attack in ("noise", "fgsm", "pgd"):
        line = next(row for row in text.splitlines() if row.startswith(attack))
        assert f"{100 * report.accuracy[attack][1]:.1f}%" in line
    png = report.plot(tmp_path / "plots" / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.worst() == min(report.accuracy[a][1] for a in report.attacks)
    assert report.worst(2 / 255) == min(report.accuracy[a][0] for a in report.attacks)
    with pytest.raises(InputError, match="was not measured.*2/255, 8/255"):
        report.worst(4 / 255)


def test_default_alpha_is_the_official_one_at_8_over_255():
    assert robustness.default_alpha(8 / 255, 7) == pytest.approx(2.55 / 255)
    assert robustness.default_alpha(8 / 255, 50) == pytest.approx(2.55 / 255)  # independent of steps from 4 on
    assert robustness.default_alpha(0.1, 2) == pytest.approx(0.05)  # never too small to cross the ball
    assert robustness.default_alpha(0.0) == 0.0


# -- worst case over surrogates, with a stand-in model --------------------------------------------------------


class _Gate(torch.autograd.Function):
    """Identity forward; the backward passes the gradient of the samples in ``mask`` only."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.view(-1, *([1] * (grad.dim() - 1))), None


class _SurrogateNet(nn.Module):
    """A stand-in for an SNN whose surrogate decides which samples' gradients survive: 'even' or 'odd' (by
    position in the batch), 'boom' (raises in forward), anything else: all. It says which surrogate it has."""

    def __init__(self, net, surrogate="all"):
        super().__init__()
        self.net = net
        self.surrogate = surrogate
        self.calls: list = []

    def set_surrogate(self, s):
        self.calls.append(s)
        self.surrogate = "all" if s is None else s

    def _current(self):
        return self.surrogate

    def forward(self, x):
        which = self._current()
        if which == "boom":
            raise RuntimeError("boom")
        idx = torch.arange(x.shape[0])
        mask = {"even": idx % 2 == 0, "odd": idx % 2 == 1}.get(which, torch.ones(x.shape[0], dtype=torch.bool))
        return self.net(_Gate.apply(x, mask.to(x.dtype)))


class _SilentNet(_SurrogateNet):
    """The same, but it cannot report its surrogate (no ``surrogate`` attribute): it is attacked on a copy."""

    def __init__(self, net):
        super().__init__(net)
        self.hidden = self.__dict__.pop("surrogate")

    def set_surrogate(self, s):
        self.calls.append(s)
        self.hidden = "all" if s is None else s

    def _current(self):
        return self.hidden


def test_worst_case_over_surrogates_is_below_each(data, ann):
    x, y = data
    full = robustness.evaluate(_SurrogateNet(ann), (x, y), eps=EPS, progress=False)
    model = _SurrogateNet(ann, surrogate="the user's own")
    report = robustness.evaluate(model, (x, y), eps=EPS, surrogates={"even": "even", "odd": "odd"}, progress=False)
    assert model.surrogate == "the user's own" and model.calls == ["even", "odd", "the user's own"]
    assert report.surrogates == ["even", "odd"] and set(report.per_surrogate) == {"fgsm", "pgd"}
    for attack in ("fgsm", "pgd"):
        for i in range(len(EPS)):
            per = [report.per_surrogate[attack][s][i] for s in ("even", "odd")]
            assert report.accuracy[attack][i] <= min(per)
            assert report.accuracy[attack][i] < min(per) - 0.1  # each surrogate attacks only half of the samples
    # FGSM is deterministic and per sample: the worst case of 'even' and 'odd' is the attack with every gradient
    assert report.accuracy["fgsm"] == full.accuracy["fgsm"]
    assert report.accuracy["noise"] == pytest.approx(full.accuracy["noise"], abs=0.05)  # noise: once, no surrogate
    text = str(report)
    assert "fgsm (worst of 2)" in text and "fgsm [even]" in text and "pgd [odd]" in text
    assert report.to_dict()["per_surrogate"]["pgd"].keys() == {"even", "odd"}


def test_the_surrogate_is_set_back_after_an_error(data, ann):
    x, y = data
    model = _SurrogateNet(ann, surrogate="odd")
    with pytest.raises(RuntimeError, match="boom"):
        robustness.evaluate(model, (x, y), eps=(0.05,), surrogates=["even", "boom", "odd"], progress=False)
    assert model.surrogate == "odd" and model.calls == ["even", "boom", "odd"]


def test_a_model_that_cannot_report_its_surrogate_is_attacked_on_a_copy(data, ann):
    x, y = data
    model = _SilentNet(ann)
    model.set_surrogate("odd")
    model.calls.clear()
    report = robustness.evaluate(model, (x, y), eps=(0.05,), surrogates={"even": "even", "all": "all"},
                                 progress=False)
    assert model.calls == [] and model.hidden == "odd"  # the original was never switched
    assert report.accuracy["fgsm"][0] <= min(v[0] for v in report.per_surrogate["fgsm"].values())
    assert report.per_surrogate["fgsm"]["all"][0] < report.per_surrogate["fgsm"]["even"][0]
    with pytest.raises(RuntimeError, match="boom"):
        robustness.evaluate(model, (x, y), eps=(0.05,), surrogates=["boom"], progress=False)
    assert model.calls == [] and model.hidden == "odd"


# -- worst case over real surrogates ----------------------------------------------------------------------------

SHAPES = ("triangle", "sigmoid", "atan", "fast_sigmoid")  # the first three: Liu et al.'s ensemble


def test_worst_case_over_real_surrogates_on_a_converted_snn(data):
    x, y = data
    snn = _snn(_mlp(scale_hidden=False))  # threshold ~6
    own = snnbridge.surrogate({"sg": {"shape": "atan", "alpha": 1.0}})
    snn.set_surrogate(own)  # the user's choice, which must come back
    xg = x[:32].clone().requires_grad_(True)
    F.cross_entropy(snn(xg), y[:32]).backward()
    grad_before = xg.grad.clone()
    surrogates = {s: snnbridge.surrogate({"sg": {"shape": s}}, framework="spikingjelly") for s in SHAPES}
    report = robustness.evaluate(snn, (x, y), eps=EPS, surrogates=surrogates, steps=10, progress=False)
    assert snn.surrogate is own
    xg = x[:32].clone().requires_grad_(True)
    F.cross_entropy(snn(xg), y[:32]).backward()
    assert torch.equal(xg.grad, grad_before)  # the neurons have the user's surrogate again
    assert all(p.grad is None for p in snn.parameters())
    assert report.surrogates == list(SHAPES)
    below = 0
    for attack in ("fgsm", "pgd"):
        per = report.per_surrogate[attack]
        assert len({tuple(v) for v in per.values()}) > 1  # the surrogates give different attacks
        for i in range(len(EPS)):
            best_single = min(v[i] for v in per.values())
            assert report.accuracy[attack][i] <= best_single
            below += report.accuracy[attack][i] < best_single
    assert below > 0  # different surrogates break different samples: the worst case is below every single one
    assert report.accuracy["noise"][1] > report.accuracy["pgd"][1] + 0.3


# -- errors ------------------------------------------------------------------------------------------------------


class _Sum(nn.Module):
    def forward(self, x):
        return x.sum(1)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: fgsm(m, x, y, -0.1), "eps must be >= 0"),
    (lambda m, x, y: pgd(m, x, y, float("nan")), "eps must be a finite number"),
    (lambda m, x, y: uniform_noise(x, -1), "eps must be >= 0"),
    (lambda m, x, y: robustness.evaluate(m, (x, y), eps=(0.1, -0.1), progress=False), "eps must be >= 0"),
    (lambda m, x, y: pgd(m, x, y, 0.1, alpha=0.0), "alpha must be > 0"),
    (lambda m, x, y: pgd(m, x, y, 0.1, alpha=-1), "alpha must be > 0"),
    (lambda m, x, y: robustness.evaluate(m, (x, y), alpha=0, progress=False), "alpha must be > 0"),
    (lambda m, x, y: pgd(m, x, y, 0.1, steps=0), "steps must be a whole number >= 1"),
    (lambda m, x, y: pgd(m, x, y, 0.1, steps=2.5), "steps must be a whole number >= 1"),
    (lambda m, x, y: fgsm(m, x, y[:-1], 0.1), r"y has shape \[199\] but x holds a batch of 200"),
    (lambda m, x, y: fgsm(m, x, y[:, None], 0.1), r"class indices of shape \[B\].*shape \[200, 1\]"),
    (lambda m, x, y: fgsm(m, x, y.float(), 0.1), r"class indices .*torch.float32"),
    (lambda m, x, y: fgsm(m, x, y + 4, 0.1), r"labels range over 4\.\.7 but the model has 4 classes"),
    (lambda m, x, y: fgsm(m, (x - 0.5) / 0.25, y, 0.1), "outside the pixel range.*normalise inside the model"),
    (lambda m, x, y: fgsm(m, (x * 255).long(), y, 0.1), "floating-point batch"),
    (lambda m, x, y: fgsm(m, x, y, 0.1, clamp=(1, 0)), "low < high"),
    (lambda m, x, y: fgsm(m, x, y, 0.1, loss="ce"), "loss must be a callable"),
    (lambda m, x, y: fgsm(_Sum(), x, y, 0.1), r"returns \[200\]; attacks and accuracy need class scores"),
    (lambda m, x, y: fgsm(lambda t: m(t), x, y, 0.1), "model must be an nn.Module"),
    (lambda m, x, y: robustness.evaluate(m, x, progress=False), "got a Tensor"),
    (lambda m, x, y: robustness.evaluate(m, [x, x, y], progress=False), r"robustness batch 1 is a Tensor, not an "
                                                                       r"\(images, labels\) pair"),
    (lambda m, x, y: robustness.evaluate(m, [{"pixels": x, "y": y}], progress=False), "robustness batch 1 is a dict"),
    (lambda m, x, y: robustness.evaluate(m, [], progress=False), "no samples"),
    (lambda m, x, y: robustness.evaluate(m, (x, y), attacks=("cw",), progress=False), "unknown attack.*'cw'"),
    (lambda m, x, y: robustness.evaluate(m, (x, y), eps=(), progress=False), "eps is empty"),
    (lambda m, x, y: robustness.evaluate(m, (x, y), surrogates=["a"], progress=False), "needs a model with "
                                                                                     "set_surrogate"),
    (lambda m, x, y: robustness.evaluate(_SurrogateNet(m), (x, y), surrogates=[], progress=False),
     "surrogates is empty"),
])
def test_bad_input_is_a_clear_error(call, match, data, ann):
    x, y = data
    before = _snapshot(ann)
    with pytest.raises(InputError, match=match):
        call(ann, x, y)
    _assert_unchanged(before, ann)


def test_a_model_without_a_gradient_is_a_clear_error(data, ann):
    x, y = data
    torch_snn = snnbridge.convert(ann, ["maxnorm"], calibration=[x], backend="torch", timesteps=4, progress=False)
    with pytest.raises(snnbridge.BackendError, match="no surrogate gradient"):
        fgsm(torch_snn, x, y, 0.1)
    report = robustness.evaluate(torch_snn, (x, y), eps=0.1, attacks=("noise",), progress=False)  # no gradient needed
    assert 0 < report.accuracy["noise"][0] <= report.clean_accuracy

    class NoGrad(nn.Module):
        def forward(self, t):
            with torch.no_grad():
                return ann(t)

    with pytest.raises(InputError, match="does not depend differentiably on the input"):
        pgd(NoGrad(), x, y, 0.1)
