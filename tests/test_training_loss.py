"""Training losses: snnbridge.training_loss with the tet and gsr plugins.

Hand-worked values (golden facts G9 for TET, G11 for the gradient-sparsity finite difference),
TET's gradient against its closed form, GSR's parameter gradient against finite differences
(float64), the rival fixed from the clean pass, composition (GSR around TET, in any recipe
order), the model's train/eval mode kept, and every recipe and input error with its fix.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import snnbridge
from snnbridge import (
    InputError,
    MissingRequirementError,
    Option,
    OptionError,
    PluginConflictError,
    PluginError,
    PluginInfo,
    UnknownPluginError,
    catalog,
    hookimpl,
)

GSR = {"gsr": {"lam": 0.5}}


# -- golden fact G9: TET on B = 1, T = 2, K = 2 ---------------------------------------------------------------

G9_OUTPUTS = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]], dtype=torch.float64)  # [T, B, K]: O(1) = (2, 0), O(2) = 0
G9_TARGETS = torch.tensor([0])


@pytest.mark.parametrize("recipe, value", [
    (["tet"], 0.439536),                         # lambda = 0.05 (CIFAR default)
    ([{"tet": {"lam": 0.001}}], 0.410628),       # the official DVS script's lambda
    ([{"tet": {"lam": 0.0}}], 0.410038),         # L_TET alone
    ([{"tet": {"lam": 1.0}}], 1.0),              # L_MSE alone: phi against every logit
    ([], 0.313262),                              # L_SDT: cross-entropy of the time-mean
], ids=["lam0.05", "lam0.001", "L_TET", "L_MSE", "L_SDT"])
def test_g9_values(recipe, value):
    got = snnbridge.training_loss(recipe)(G9_OUTPUTS, G9_TARGETS)
    assert got.dim() == 0
    assert got.item() == pytest.approx(value, abs=1e-6)


def test_g9_sdt_is_below_tet_and_phi_is_used():
    sdt = snnbridge.training_loss([])(G9_OUTPUTS, G9_TARGETS)
    tet = snnbridge.training_loss([{"tet": {"lam": 0.0}}])(G9_OUTPUTS, G9_TARGETS)
    assert sdt < tet  # the lemma L_SDT <= L_TET, strict here
    # phi = 2: (O - 2)^2 = 0, 4, 4, 4 -> L_MSE = 3
    assert snnbridge.training_loss([{"tet": {"lam": 1.0, "phi": 2.0}}])(G9_OUTPUTS, G9_TARGETS).item() == 3.0


def test_tet_gradient_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    T, B, K, lam, phi = 3, 4, 5, 0.3, 0.7
    outputs = torch.randn(T, B, K, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, K, (B,), generator=g)
    snnbridge.training_loss([{"tet": {"lam": lam, "phi": phi}}])(outputs, targets).backward()
    onehot = torch.nn.functional.one_hot(targets, K).to(torch.float64)
    o = outputs.detach()
    expected = (1 - lam) / T * (o.softmax(-1) - onehot) / B + 2 * lam * (o - phi) / (T * B * K)
    torch.testing.assert_close(outputs.grad, expected, rtol=1e-12, atol=1e-14)


def test_tet_refuses_decoded_outputs_and_batch_first_layouts():
    loss = snnbridge.training_loss(["tet"])
    with pytest.raises(InputError, match=r"per-step outputs \[T, B, K\].*snn\.steps\(x\)"):
        loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match=r"time first \[T, B, K\]: pass outputs\.transpose\(0, 1\)"):
        loss(torch.zeros(4, 2, 3), torch.zeros(4, dtype=torch.long))  # [B=4, T=2, K=3]


def test_mean_cross_entropy_takes_per_step_and_decoded_outputs():
    g = torch.Generator().manual_seed(1)
    outputs, targets = torch.randn(3, 4, 5, generator=g), torch.randint(0, 5, (4,), generator=g)
    loss = snnbridge.training_loss([])
    expected = torch.nn.functional.cross_entropy(outputs.mean(0), targets)
    torch.testing.assert_close(loss(outputs, targets), expected)
    torch.testing.assert_close(loss(outputs.mean(0), targets), expected)
    assert snnbridge.training_loss(()) is not None and repr(loss) == "TrainingLoss(cross_entropy(time-mean))"


# -- golden fact G11: the finite difference of the pairwise softmax ------------------------------------------


def _linear(weight, bias=None) -> nn.Linear:
    """A float64 linear "model" with the given weights (a stand-in for an SNN's decoded output)."""
    weight = torch.as_tensor(weight, dtype=torch.float64)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return lin


def _regularizer(recipe_term, outputs_fn, model, x, y):
    """lam * R through the public API: the loss with the term minus the same base without it."""
    x = x.clone().requires_grad_(True)
    out = outputs_fn(x)
    with_term = snnbridge.training_loss([recipe_term])(out, y, model=model, inputs=x)
    return (with_term - snnbridge.training_loss([])(out, y)).item()


def test_g11_finite_difference_through_the_public_api():
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = _linear(torch.stack([w, torch.zeros(3, dtype=torch.float64)]))  # true-minus-rival logit = w . x
    x, y = torch.zeros(1, 3, dtype=torch.float64), torch.tensor([0])
    reg = _regularizer({"gsr": {"lam": 1.0, "h": 0.01}}, model, model, x, y)
    assert reg == pytest.approx(0.765469, abs=1e-6)  # g^2, g = (sigmoid(0.035) - 0.5) / 0.01
    assert math.sqrt(reg) == pytest.approx(0.874911, abs=1e-6)  # the finite difference g itself
    xg = x.clone().requires_grad_(True)
    f = torch.sigmoid(model(xg)[:, 0] - model(xg)[:, 1]).sum()
    (grad,) = torch.autograd.grad(f, xg)
    assert grad.abs().sum().item() == pytest.approx(0.875)  # ||df/dx||_1, what g approximates
    # lam scales the term linearly; h changes the difference quotient
    assert _regularizer({"gsr": {"lam": 0.1}}, model, model, x, y) == pytest.approx(0.0765469, abs=1e-7)
    assert _regularizer({"gsr": {"lam": 1.0, "h": 1.0}}, model, model, x, y) == pytest.approx(
        (torch.sigmoid(torch.tensor(3.5)).item() - 0.5) ** 2, rel=1e-6)


def test_rival_is_fixed_from_the_clean_pass():
    # logits (x, 0.001, x): at x = 0 the rival of class 0 is class 1; after the step x' = +h class 2 leads the rivals
    model = _linear([[1.0], [0.0], [1.0]], bias=[0.0, 0.001, 0.0])
    x, y, h = torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0]), 0.01
    reg = _regularizer({"gsr": {"lam": 1.0, "h": h}}, model, model, x, y)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    fixed = ((sig(h - 0.001) - sig(-0.001)) / h) ** 2      # rival 1 in both passes
    recomputed = ((sig(0.0) - sig(-0.001)) / h) ** 2        # rival 2 in the perturbed pass: f' = sigmoid(0)
    assert reg == pytest.approx(fixed, rel=1e-9)
    assert abs(fixed - recomputed) > 0.05


def test_gsr_parameter_gradient_flows_through_both_passes():
    g = torch.Generator().manual_seed(2)
    model = _linear(torch.randn(3, 4, generator=g, dtype=torch.float64),
                    bias=torch.randn(3, generator=g, dtype=torch.float64))
    x0 = torch.rand(2, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2])
    loss_fn = snnbridge.training_loss([{"gsr": {"lam": 0.5, "h": 0.01}}])

    def value(second_pass=model):
        x = x0.clone().requires_grad_(True)
        return loss_fn(model(x), y, model=second_pass, inputs=x)

    model.zero_grad()
    value().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    eps = 1e-6
    for p, grad in zip(model.parameters(), grads):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            values = []
            for shift in (eps, -2 * eps, eps):  # up, down, back
                with torch.no_grad():
                    p.view(-1)[i] += shift
                values.append(value().item())
            fd.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
        torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
    # without the perturbed pass's gradient the parameter gradient is a different one
    model.zero_grad()
    value(second_pass=lambda z: model(z).detach()).backward()
    assert (model.weight.grad - grads[0]).abs().max() > 1e-3


class _PerStep(nn.Module):
    """A toy multi-step network: [B, D] -> [T, B, K], one linear map per step (with dropout to show the mode)."""

    def __init__(self, steps=3, dim=4, classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(steps, classes, dim, generator=g, dtype=torch.float64))
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return torch.einsum("tkd,bd->tbk", self.weight, self.drop(x))


def _reference_regularizer(model, x, y, h):
    """R written out as in the official train_reg: per sample, the rival by a max over the other classes."""
    x = x.clone().requires_grad_(True)
    o = model(x).mean(0)
    f, rivals = [], []
    for b in range(len(y)):
        others = [k for k in range(o.shape[1]) if k != y[b]]
        k = others[int(o[b, others].argmax())]
        rivals.append(k)
        f.append(torch.exp(o[b, y[b]]) / (torch.exp(o[b, y[b]]) + torch.exp(o[b, k])))
    f = torch.stack(f)
    (d,) = torch.autograd.grad(f.sum(), x)
    o2 = model(x.detach() + h * d.sign()).mean(0)
    f2 = torch.stack([torch.exp(o2[b, y[b]]) / (torch.exp(o2[b, y[b]]) + torch.exp(o2[b, k]))
                      for b, k in enumerate(rivals)])
    return ((f2 - f) / h).pow(2).mean().item()


@pytest.mark.parametrize("order", ["tet-first", "gsr-first"])
def test_gsr_wrapping_tet_is_tet_plus_lam_r(order):
    model = _PerStep()
    g = torch.Generator().manual_seed(4)
    x0, y = torch.rand(5, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    recipe = ["tet", {"gsr": {"lam": 0.5, "h": 0.02}}]
    loss = snnbridge.training_loss(recipe if order == "tet-first" else recipe[::-1])
    assert repr(loss) == "TrainingLoss(tet(lam=0.05, phi=1.0) + gsr(h=0.02, lam=0.5))"
    x = x0.clone().requires_grad_(True)
    out = model(x)
    total = loss(out, y, model=model, inputs=x)
    tet = snnbridge.training_loss(["tet"])(out, y)
    reg = _reference_regularizer(model, x0, y, 0.02)
    assert reg > 1e-3
    assert total.item() == pytest.approx(tet.item() + 0.5 * reg, rel=1e-10)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gsr_keeps_the_model_mode_and_weights(mode):
    model = _PerStep().train(mode == "train")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    snnbridge.training_loss(["tet", GSR])(model(x), torch.tensor([0, 1]), model=model, inputs=x).backward()
    assert all(m.training == (mode == "train") for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gsr_on_a_converted_snn_trains_through_spikingjelly():
    pytest.importorskip("spikingjelly")
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = torch.rand(16, 6)
    snn = snnbridge.convert(ann, ["maxnorm"], calibration=[data], backend="spikingjelly", timesteps=3, progress=False)
    for p in snn.parameters():
        p.requires_grad_(True)
    snn.train()
    x = data[:8].clone().requires_grad_(True)
    y = torch.arange(8) % 3
    loss = snnbridge.training_loss(["tet", {"gsr": {"lam": 0.1}}])(snn.steps(x), y, model=snn, inputs=x)
    loss.backward()
    grads = [p.grad for p in snn.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)
    assert snn.training


# -- gsr's requirements at call time ----------------------------------------------------------------------------


def test_gsr_call_errors_name_the_fix():
    model = _linear([[1.0, 0.0], [0.0, 1.0]])
    loss = snnbridge.training_loss([GSR])
    y = torch.tensor([0])
    x = torch.rand(1, 2, dtype=torch.float64)
    with pytest.raises(InputError, match=r"x\.requires_grad_\(True\) before the forward pass"):
        loss(model(x), y, model=model, inputs=x)
    x.requires_grad_(True)
    out = model(x)
    with pytest.raises(MissingRequirementError, match=r"model=snn, inputs=x"):
        loss(out, y, inputs=x)
    with pytest.raises(MissingRequirementError, match=r"model=snn, inputs=x"):
        loss(out, y, model=model)
    with pytest.raises(InputError, match=r"do not depend on the given inputs"):
        loss(out, y, model=model, inputs=torch.rand(1, 2, dtype=torch.float64, requires_grad=True))
    with pytest.raises(InputError, match=r"no gradient.*torch\.no_grad"):
        loss(out.detach(), y, model=model, inputs=x)
    with pytest.raises(InputError, match=r"pass the model the outputs came from"):
        loss(out, y, model=lambda z: torch.zeros(1, 5), inputs=x)


def test_targets_and_outputs_are_checked_before_any_plugin():
    loss = snnbridge.training_loss([])
    out = torch.zeros(2, 3)
    cases = [
        ((out, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])), r"targets\.argmax\(1\)"),
        ((out, torch.tensor([0, 1, 2])), r"hold 3 labels but the outputs \[2, 3\] hold 2"),
        ((out, torch.tensor([0, 3])), r"class indices in 0\.\.2"),
        ((torch.zeros(1, 2, 3, 4), torch.tensor([0])), r"\[T, B, K\] \(snn\.steps\(x\)\)"),
        (([[0.0, 1.0]], torch.tensor([0])), r"torch\.Tensor"),
        ((torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1])), r"outputs\.float\(\)"),
        ((out, [0, 1]), r"torch\.as_tensor"),
    ]
    for args, fix in cases:
        with pytest.raises(InputError, match=fix):
            loss(*args)


# -- recipes ------------------------------------------------------------------------------------------------------


class _BaseLoss:
    """A third-party base loss: half the cross-entropy of the mean (it records the base it was given)."""

    name = "halfce"

    def __init__(self):
        self.given_base = "unset"

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="half CE (test)", kind="training", provides=("training_loss",))

    @hookimpl
    def snnbridge_training_loss(self, options, base):
        self.given_base = base
        return _HalfCE()


class _HalfCE:
    def __call__(self, outputs, targets, *, model=None, inputs=None):
        return 0.5 * torch.nn.functional.cross_entropy(outputs.mean(0) if outputs.dim() == 3 else outputs, targets)


class _Term:
    """A third-party term adding ``offset`` to its base."""

    name = "offset"

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="adds a constant (test)", kind="training", provides=("loss_term",))

    @hookimpl
    def snnbridge_add_options(self):
        return [Option("value", float, 1.0, "the constant")]

    @hookimpl
    def snnbridge_training_loss(self, options, base):
        return _Offset(base, options["value"])


class _Offset:
    def __init__(self, base, value):
        self.base, self.value = base, value

    def __call__(self, outputs, targets, *, model=None, inputs=None):
        return self.base(outputs, targets, model=model, inputs=inputs) + self.value


class _Surrogate:
    """A training plugin that gives no loss (a surrogate gradient)."""

    name = "fakesurrogate"

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="a surrogate (test)", kind="training", provides=("surrogate",))

    @hookimpl
    def snnbridge_surrogate(self, options):
        return torch.sigmoid


class _OtherSurrogate(_Surrogate):
    name = "othersurrogate"


class _DeclaresNoHook:
    name = "nohook"

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="declares a term, implements nothing (test)", kind="training",
                          provides=("loss_term",))


class _ReturnsNumber:
    name = "number"

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="a loss returning a float (test)", kind="training", provides=("training_loss",))

    @hookimpl
    def snnbridge_training_loss(self, options):
        return lambda outputs, targets, **kw: 1.0


def test_base_comes_first_and_terms_wrap_in_recipe_order():
    base = _BaseLoss()
    out, y = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5)), torch.tensor([1, 3, 0])
    half = 0.5 * torch.nn.functional.cross_entropy(out.mean(0), y).item()
    loss = snnbridge.training_loss([_Term(), base])  # the term first: the base is still built first
    assert base.given_base is None  # a base loss builds from nothing
    assert loss(out, y).item() == pytest.approx(half + 1.0)
    assert repr(loss) == "TrainingLoss(halfce() + offset(value=1.0))"
    # without a base plugin the term wraps cross-entropy on the time-mean
    plain = snnbridge.training_loss([(_Term(), {"value": 2.0})])
    assert plain(out, y).item() == pytest.approx(torch.nn.functional.cross_entropy(out.mean(0), y).item() + 2.0)
    assert repr(plain) == "TrainingLoss(cross_entropy(time-mean) + offset(value=2.0))"


def test_a_surrogate_in_a_loss_recipe_is_skipped_and_listed():
    loss = snnbridge.training_loss([_Surrogate(), "tet"])
    assert loss.skipped == ("fakesurrogate",)
    assert repr(loss) == "TrainingLoss(tet(lam=0.05, phi=1.0), skipped=['fakesurrogate'])"
    assert loss(G9_OUTPUTS, G9_TARGETS).item() == pytest.approx(0.439536, abs=1e-6)
    assert loss.recipe.names == ["fakesurrogate", "tet"]


@pytest.mark.parametrize("recipe, error, fix", [
    (["tte"], UnknownPluginError, r"Did you mean 'tet'"),
    ([{"tet": {"lamb": 0.1}}], OptionError, r"Did you mean 'lam'"),
    ([{"tet": {"lam": 1.5}}], OptionError, r"0 <= lam <= 1"),
    (["gsr"], OptionError, r"needs option 'lam'.*\{'gsr': \{'lam': \.\.\.\}\}"),
    ([{"gsr": {"lam": 0.0}}], OptionError, r"lam > 0 \(leave gsr out"),
    ([{"gsr": {"lam": 0.1, "h": -0.01}}], OptionError, r"h > 0"),
    (["maxnorm", "tet"], PluginConflictError, r"'maxnorm' is a conversion method.*snnbridge\.convert"),
    (["torch"], PluginConflictError, r"backend='torch' to snnbridge\.convert"),
    (["tet", "tet"], PluginConflictError, r"list it once"),
    ([_BaseLoss(), "tet"], PluginConflictError, r"both base losses.*Keep one of 'halfce' and 'tet'"),
    ([_DeclaresNoHook()], PluginError, r"does not implement snnbridge_training_loss"),
    ([{"tet": 0.05}], snnbridge.RecipeParseError, r"must be a mapping"),
    ([_Surrogate(), _OtherSurrogate(), "tet"], PluginConflictError, r"only one surrogate gradient"),
], ids=["unknown-plugin", "unknown-option", "option-range", "gsr-lam-required", "gsr-lam-zero", "gsr-h-negative",
        "conversion-method", "backend", "duplicate", "two-base-losses", "term-without-hook", "options-not-mapping",
        "two-surrogates"])
def test_recipe_errors_before_any_work(recipe, error, fix):
    with pytest.raises(error, match=fix):
        snnbridge.training_loss(recipe)


def test_a_loss_returning_no_tensor_is_a_plugin_error():
    loss = snnbridge.training_loss([_ReturnsNumber()])
    with pytest.raises(PluginError, match=r"scalar tensor"):
        loss(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_recipe_forms_and_the_method_table():
    a = snnbridge.training_loss([{"tet": {"lam": 0.1}}, ("gsr", {"lam": 0.2})])
    b = snnbridge.training_loss(snnbridge.parse_config({"recipe": [{"tet": {"lam": 0.1}}, {"gsr": {"lam": 0.2}}]})
                                .recipe)
    assert repr(a) == repr(b) == "TrainingLoss(tet(lam=0.1, phi=1.0) + gsr(h=0.01, lam=0.2))"
    assert repr(snnbridge.training_loss("tet")) == "TrainingLoss(tet(lam=0.05, phi=1.0))"
    rows = {r["plugin"]: r for r in catalog.method_rows()}
    assert rows["tet"]["stages"] == ["loss"] and "gsr" in rows["tet"]["stacks_with"]
    assert "tet" in rows["gsr"]["stacks_with"] and rows["gsr"]["options"] == ["h", "lam"]
    assert "tet" not in rows["maxnorm"]["stacks_with"]
    assert "training_loss" in snnbridge.plugin.EXCLUSIVE_CAPABILITIES and "loss_term" in snnbridge.CAPABILITIES
