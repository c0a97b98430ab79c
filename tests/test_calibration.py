"""SNN Calibration (plugin ``calibration``): golden fact G12, the corrections' effect, T, the untouched ANN."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers import data_driven as dd
from helpers.plugins import fixed_threshold
from snnbridge import PluginInfo, hookimpl

BACKENDS = snnbridge.get_registry().names("backend")


def _relu_head(features: int = 1) -> nn.Module:
    """input -> ReLU (the site sees the input itself) -> Linear."""
    return nn.Sequential(nn.ReLU(), nn.Linear(features, 1)).eval()


class _Identity2(nn.Module):
    """Linear(2, 2) = identity with zero bias, ReLU, Linear head: the site's current is the input."""

    def __init__(self):
        super().__init__()
        self.l, self.h = nn.Linear(2, 2), nn.Linear(2, 1)
        with torch.no_grad():
            self.l.weight.copy_(torch.eye(2))
            self.l.bias.zero_()

    def forward(self, x):
        return self.h(torch.relu(self.l(x)))


def _brute_force(a: torch.Tensor, T: int, mode: str) -> float:
    """An independent transcription of the official search for one batch (95 candidates, strict <)."""
    top, best, best_err = float(a.max()), None, float("inf")
    for i in range(95):
        th = top * (1 - 0.01 * i)
        k = torch.clamp(a * T / th + (0.5 if mode == "round" else 0.0), 0, T).floor()
        err = float(((a - k * th / T) ** 2).mean())
        if err < best_err:
            best, best_err = th, err
    return best


# -- G12 -----------------------------------------------------------------------------------------------------


def test_g12_clipping_threshold_search_floor():
    a = torch.tensor([[0.2], [0.45], [0.7], [1.6]], dtype=torch.float64)
    snn = snnbridge.convert(_relu_head(), [{"calibration": {"preset": "none"}}], calibration=[a.float()],
                            timesteps=4, progress=False)
    spec = snn.specs["0"]
    assert spec.threshold == pytest.approx(1.392, abs=1e-6)  # i = 13: 1.6 * 0.87
    # its MSE under the floor model is 0.023421 (G12)
    k = torch.clamp(a * 4 / 1.392, 0, 4).floor()
    assert float(((a - k * 1.392 / 4) ** 2).mean()) == pytest.approx(0.023421, abs=1e-6)
    assert spec.v0 == 0.0 and spec.step_bias == pytest.approx(1.392 / 8)  # +theta/(2T) per step
    assert spec.threshold == pytest.approx(_brute_force(a, 4, "floor"))


def test_search_quantizer_round_option_and_ema_over_seven_batches():
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(32, 1, generator=g) * (1 + i) for i in range(7)] + [torch.full((32, 1), 100.0)]
    for mode in ("floor", "round"):
        snn = snnbridge.convert(_relu_head(), [{"calibration": {"preset": "none", "search_quantizer": mode}}],
                                calibration=batches, timesteps=8, progress=False)
        ema = None
        for b in batches[:7]:  # the 8th batch (huge values) is beyond threshold_batches = 7
            th = _brute_force(b.double(), 8, mode)
            ema = th if ema is None else 0.9 * ema + 0.1 * th
        assert snn.specs["0"].threshold == pytest.approx(ema, rel=1e-5)
    floor = snnbridge.convert(_relu_head(), [{"calibration": {"preset": "none"}}], calibration=batches[:1],
                              timesteps=8, progress=False).specs["0"].threshold
    rnd = snnbridge.convert(_relu_head(), [{"calibration": {"preset": "none", "search_quantizer": "round"}}],
                            calibration=batches[:1], timesteps=8, progress=False).specs["0"].threshold
    assert floor != rnd


@pytest.mark.parametrize("backend", BACKENDS)
def test_g12_bias_calibration(backend):
    # ANN channel means (0.6, 0.2); SNN at T = 4 with theta = 1 and +1/8 per step: 2 and 1 spikes -> (0.5, 0.25)
    x = torch.tensor([[0.6, 0.2]])
    snn = snnbridge.convert(_Identity2().eval(), [fixed_threshold("one", 1.0), "calibration"], calibration=[x],
                            timesteps=4, progress=False, backend=backend)
    torch.testing.assert_close(snn.graph_module.l.bias.detach(), torch.tensor([0.1, -0.05]))
    assert any("BC at site" in n and "-> l" in n for n in snn.report["notes"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_g12_potential_calibration(backend):
    # T = 4, ANN 0.3, SNN 0.25 (one spike) -> v0 += T * (0.3 - 0.25) = 0.2 at that position
    x = torch.tensor([[0.3, 0.3]])
    snn = snnbridge.convert(_Identity2().eval(), [fixed_threshold("one", 1.0), {"calibration": {"steps": ["pc"]}}],
                            calibration=[x], timesteps=4, progress=False, backend=backend)
    torch.testing.assert_close(snn.specs["relu"].v0, torch.tensor([0.2, 0.2]))
    torch.testing.assert_close(snn.graph_module.l.bias.detach(), torch.zeros(2))  # PC leaves the bias


def test_bias_correction_without_a_single_feeding_layer_uses_a_per_step_bias():
    class KeptBN(nn.Module):  # a BN after a residual add is kept: no Conv whose bias reaches the site unchanged
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            return self.head(torch.flatten(torch.relu(self.bn(self.conv(x) + x)), 1))

    torch.manual_seed(0)
    model = KeptBN().eval()
    data = [torch.rand(16, 3, 4, 4) for _ in range(2)]
    base = snnbridge.convert(model, [{"calibration": {"preset": "none"}}], calibration=data, timesteps=4,
                             progress=False)
    snn = snnbridge.convert(model, ["calibration"], calibration=data, timesteps=4, progress=False)
    (name,) = snn.sites
    assert snn.specs[name].step_bias.shape == (4, 3)
    assert any("per-step, per-channel neuron bias" in n for n in snn.report["notes"])

    def channel_error(s):
        with s.record(name) as rec:
            s.run(data[0])
        rate = rec[name].spikes.mean(0) * s.specs[name].threshold
        acts = dd.ann_activations(model, data[0])
        return float((rate - acts[name]).mean(dim=(0, 2, 3)).abs().mean())

    assert channel_error(snn) < channel_error(base)


# -- the corrections on a trained BN network --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    return dd.trained_net(), dd.calibration_batches()


def _convert(net, data, options, T=8, backend="torch", before=()):
    return snnbridge.convert(net, [*before, {"calibration": options}], calibration=data, timesteps=T,
                             progress=False, backend=backend)


def test_mse_threshold_search_beats_max_norm(trained):
    net, data = trained
    mx = snnbridge.convert(net, ["maxnorm"], calibration=data, timesteps=8, progress=False)
    search = _convert(net, data, {"preset": "none"})
    e_max, e_search = dd.layer_errors(mx, 8), dd.layer_errors(search, 8)
    assert dd.total(e_search, "mse") < 0.5 * dd.total(e_max, "mse")
    assert dd.accuracy(search) >= dd.accuracy(mx)


@pytest.mark.parametrize("steps,error", [(["bc"], "channel"), (["pc"], "position"), (["wc"], "mse")])
def test_each_correction_lowers_the_error_it_targets(trained, steps, error):
    """Measured on held-out images: BC the per-channel mean error, PC the per-position mean error, WC the MSE."""
    net, data = trained
    base = _convert(net, data, {"preset": "none"})
    opts = {"steps": steps, "wc_samples": 256, "wc_iters": 200, "wc_lr": 1e-3}
    corrected = _convert(net, data, opts)
    e0, e1 = dd.layer_errors(base, 8), dd.layer_errors(corrected, 8)
    assert dd.total(e1, error) < 0.8 * dd.total(e0, error), (e0, e1)
    assert dd.accuracy(corrected) >= dd.accuracy(base)
    if steps == ["bc"]:  # every site of this network has a Conv/Linear feeding it (incl. the residual one)
        assert not any("no single Conv/Linear" in n for n in corrected.report["notes"])


@pytest.mark.parametrize("preset", ["light", "advanced"])
def test_presets_keep_accuracy_at_T8_and_match_across_backends(trained, preset):
    net, data = trained
    opts = {"preset": preset, "wc_samples": 128, "wc_iters": 100, "wc_lr": 1e-3}
    base = _convert(net, data, {"preset": "none"})
    x, _ = dd.test_set()
    outs, weights = {}, {}
    for backend in BACKENDS:
        snn = _convert(net, data, opts, backend=backend)
        outs[backend] = snn(x[:128])
        weights[backend] = {k: v for k, v in snn.graph_module.state_dict().items() if "neuron" not in k}
        if backend == "torch":
            assert dd.accuracy(snn) >= dd.accuracy(base)
    for backend, out in outs.items():
        # the corrections, computed from each backend's own simulation, are the same
        for k, w in weights[backend].items():
            torch.testing.assert_close(w, weights["torch"][k], rtol=0, atol=1e-5, msg=f"{backend}: {k}")
        close = ((out - outs["torch"]).abs().amax(1) <= 1e-5).float().mean()
        if backend == "snntorch":  # its charge rounds differently (adapters/snntorch.py): a spike may move, rarely
            assert close >= 0.99, (backend, float(close))
        else:
            torch.testing.assert_close(out, outs["torch"], rtol=0, atol=1e-5, msg=backend)


def test_neuron_offset_is_the_start_potential_in_thresholds():
    """Hand-worked: (v0 + sum of the first T per-step biases) / theta, per channel where either is."""
    from snnbridge import NeuronSpec
    from snnbridge.plugins.calibration import neuron_offset

    like = torch.zeros(5, 2, 3, 3)
    T = 4
    assert neuron_offset(NeuronSpec(threshold=2.0), like, 2.0, T) == 0.0
    assert neuron_offset(NeuronSpec(threshold=2.0, step_bias=2.0 / (2 * T)), like, 2.0, T) == pytest.approx(0.5)
    assert neuron_offset(NeuronSpec(threshold=2.0, v0=1.0), like, 2.0, T) == pytest.approx(0.5)
    th = torch.tensor([1.0, 4.0])
    table = torch.tensor([[0.1, 0.0], [0.1, 1.0], [0.1, 0.0], [0.1, 0.0], [9.0, 9.0]])  # row 5 is past T: unused
    got = neuron_offset(NeuronSpec(threshold=th, v0=torch.tensor([0.2, 2.0]), step_bias=table), like,
                        th.view(1, 2, 1, 1), T)
    torch.testing.assert_close(got.expand(1, 2, 3, 3)[0, :, 0, 0], torch.tensor([(0.2 + 0.4) / 1.0, (2.0 + 1.0) / 4.0]))


@pytest.mark.parametrize("shift,same_as", [("auto", "round"), ("off", "floor")])
def test_wc_neuron_quantizer_models_the_neuron_the_site_has(trained, shift, same_as):
    """The default wc_quantizer (neuron) fits the same weights as round under the +theta/(2T) shift and as floor
    without it, and the two explicit models differ (so the comparison can fail)."""
    net, data = trained
    opts = {"steps": ["wc"], "wc_samples": 64, "wc_iters": 30, "wc_lr": 1e-2, "shift": shift}
    got = {q: {k: v for k, v in _convert(net, data, {**opts, "wc_quantizer": q}).graph_module.state_dict().items()
               if k.endswith("weight")} for q in ("neuron", "round", "floor")}
    other = "floor" if same_as == "round" else "round"
    for k, w in got["neuron"].items():
        torch.testing.assert_close(w, got[same_as][k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(w, got[other][k]) for k, w in got["neuron"].items())


# -- T is specific ----------------------------------------------------------------------------------------------


def test_runtime_T_other_than_calibrated_warns_or_raises(trained):
    net, data = trained
    snn = _convert(net, data, {"preset": "light"}, T=8)
    x = dd.test_set()[0][:8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snn(x)  # the calibrated T: silent
        snn.sweep(x)
    with pytest.warns(UserWarning, match="calibrated for T = 8 .* run for T = 16"):
        snn(x, timesteps=16)
    assert any("T-specific" in n for n in snn.report["notes"])
    strict = _convert(net, data, {"preset": "light", "on_mismatch": "error"}, T=8)
    with pytest.raises(snnbridge.InputError, match="T-specific"):
        strict(x, timesteps=4)
    # the calibrated T can differ from the conversion's T (the official scripts always calibrate at 32)
    at32 = _convert(net, data, {"preset": "none", "timesteps": 32}, T=8)
    assert at32.specs[next(iter(at32.specs))].step_bias == pytest.approx(
        at32.specs[next(iter(at32.specs))].threshold / 64)
    with pytest.warns(UserWarning, match="calibrated for T = 32"):
        at32(x)


# -- the untouched ANN ----------------------------------------------------------------------------------------


class _Spy:
    """Runs after calibration: checks that the reference ANN still computes what a fresh preparation computes."""

    name = "spy"

    def __init__(self, model, x):
        self.model, self.x, self.checked = model, x, False

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="checks the reference ANN (test)")

    @hookimpl
    def snnbridge_correct_error(self, snn, ctx):
        fresh = snnbridge.trace_for_conversion(self.model).module
        torch.testing.assert_close(ctx.ann(self.x), fresh(self.x), rtol=0, atol=0)
        ref = dict(ctx.ann.named_parameters())
        for name, p in snn.graph_module.named_parameters():
            if name in ref:
                assert p.data_ptr() != ref[name].data_ptr()
        self.checked = True


def test_calibration_never_changes_the_user_model_nor_the_reference_ann(trained):
    net, data = trained
    model = copy.deepcopy(net).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(n, m.training) for n, m in model.named_modules()]
    x = dd.test_set()[0][:16]
    spy = _Spy(copy.deepcopy(net), x)
    snn = snnbridge.convert(model, [{"calibration": {"preset": "advanced", "wc_samples": 64, "wc_iters": 20,
                                                     "wc_lr": 1e-2}}, spy],
                            calibration=data, timesteps=4, progress=False)
    assert spy.checked
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [(n, m.training) for n, m in model.named_modules()] == flags
    # the SNN's weights and biases moved (WC, BC/PC live in the SNN copy only)
    prepared = snnbridge.trace_for_conversion(net).module
    ref = dict(prepared.named_parameters())
    moved = [n for n, p in snn.graph_module.named_parameters() if n in ref and not torch.equal(p, ref[n])]
    assert moved
    snn(x)


def test_light_bias_correction_goes_into_the_snn_copy_only(trained):
    net, data = trained
    snn = _convert(net, data, {"preset": "light"})
    ref = dict(snnbridge.trace_for_conversion(net).module.named_parameters())
    changed = {n for n, p in snn.graph_module.named_parameters() if n.endswith("bias") and not torch.equal(p, ref[n])}
    assert changed  # BC wrote into the SNN copy's biases
    torch.testing.assert_close(net(dd.test_set()[0][:8]), dd.trained_net()(dd.test_set()[0][:8]))


# -- WC's fast paths equal the expressions they replace ---------------------------------------------------------

def _wc_reference_loss(z, a, th, T, offset):
    q = torch.clamp(z * T / th + offset, 0, T)
    return ((((q.floor() - q).detach() + q) * th / T - a) ** 2).sum(1).mean()


@pytest.mark.parametrize("shape,per_channel,offset", [((6, 4, 5, 5), True, 0.5), ((6, 4, 5, 5), False, 0.0),
                                                      ((9, 3), True, 0.0), ((6, 4, 5, 5), True, "tensor")])
def test_wc_loss_and_gradient_equal_autograd_on_the_official_expression(shape, per_channel, offset):
    from snnbridge.plugins.calibration import _QuantizedSquaredError

    g = torch.Generator().manual_seed(0)
    T = 8
    th = (torch.rand(shape[1], generator=g) + 0.5).reshape(1, -1, *[1] * (len(shape) - 2)) if per_channel else 1.25
    z = torch.randn(shape, generator=g) * 1.5
    if offset == "tensor":  # a per-channel, per-position start offset (PC-like v0)
        offset = torch.rand(1, *shape[1:], generator=g) * 0.9
        edge = float(-offset.view(-1)[1]) * float(th.view(-1)[0])
    else:
        edge = -offset * (th if isinstance(th, float) else 1.0)
    z.view(-1)[:4] = torch.tensor([0.0, edge, 3.0, -1.0])  # clip edges
    a = torch.rand(shape, generator=g)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ref = _wc_reference_loss(z1, a, th, T, offset)
    ref.backward()
    up, down = (T / th, th / T)
    got = _QuantizedSquaredError.apply(z2, a, up, down, offset, T)
    got.backward()
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)
    assert torch.allclose(z2.grad, z1.grad, rtol=1e-5, atol=1e-9)
    assert (z1.grad == 0).any() and (z1.grad != 0).any()  # both sides of the clip are exercised


@pytest.mark.parametrize("k,size,groups,bias", [(2, 8, 1, True), (2, 7, 2, False), (3, 9, 1, True)])
def test_folded_average_pool_equals_conv_then_pool_with_its_gradient(k, size, groups, bias):
    from snnbridge.plugins.calibration import _fold_average_pool

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias)
    pool = nn.AvgPool2d(k)
    fast = _fold_average_pool(conv, [pool])
    assert fast is not None
    x = torch.rand(3, 4, size, size)
    w1, w2 = conv.weight.detach().clone().requires_grad_(True), conv.weight.detach().clone().requires_grad_(True)
    ref = pool(F.conv2d(x, w1, conv.bias, padding=1, groups=groups))
    got = fast(w2, x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-6)
    (ref * torch.arange(ref.numel()).reshape(ref.shape)).sum().backward()
    (got * torch.arange(got.numel()).reshape(got.shape)).sum().backward()
    assert torch.allclose(w2.grad, w1.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layer,post", [(nn.Conv2d(2, 2, 3, stride=2, padding=1), [nn.AvgPool2d(2)]),
                                        (nn.Conv2d(2, 2, 3, padding=1), [nn.AvgPool2d(2, padding=1)]),
                                        (nn.Conv2d(2, 2, 3, padding=1), [nn.AvgPool2d(2, stride=1)]),
                                        (nn.Conv2d(2, 2, 3, padding=1), [nn.MaxPool2d(2)]),
                                        (nn.Conv2d(2, 2, 3, padding=1), [nn.AvgPool2d(2), nn.AvgPool2d(2)]),
                                        (nn.Linear(2, 2), [])])
def test_pool_folding_declines_what_it_cannot_fold(layer, post):
    from snnbridge.plugins.calibration import _fold_average_pool

    assert _fold_average_pool(layer, post) is None
