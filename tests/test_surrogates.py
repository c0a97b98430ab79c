"""Surrogate gradients: the core object, LocalZO's golden facts, the classic shapes, every backend's wrapping.

Monte-Carlo tolerances. A LocalZO check averages the estimate over ``N`` neurons that share
one ``u`` (each with its own ``m`` draws); the mean of ``N`` independent estimates has standard
error ``sigma / sqrt(N)``, with ``sigma`` the standard deviation of one estimate, measured on
the same sample. Every mean is required within ``5 sigma / sqrt(N)`` of the golden value (a
fair estimator fails this with probability below 1e-6; the seeds make each run identical
anyway), and every probability ``p`` within ``5 sqrt(p (1 - p) / N)``. With ``N = 10^5`` that is
about 0.5 % of the value for the means and 0.002 to 0.008 for the probabilities.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

import snnbridge
from helpers import zoo
from helpers.plugins import module_plugin
from snnbridge import (
    BackendError,
    InputError,
    MissingRequirementError,
    NeuronSpec,
    OptionError,
    PluginConflictError,
    PluginError,
    Surrogate,
    UnknownPluginError,
    hookimpl,
    simulate,
)

BACKENDS = ("torch", "spikingjelly", "snntorch")
N = 100_000


def _derivative_samples(recipe: dict, us, n: int = N) -> torch.Tensor:
    """``[len(us), n]`` LocalZO estimates through the public API: the gradient of ``sum(s(x))`` at ``x = u``."""
    s = snnbridge.surrogate(recipe)
    x = torch.tensor(us, dtype=torch.float64).repeat_interleave(n).view(len(us), n).requires_grad_(True)
    s(x).sum().backward()
    return x.grad


def _assert_mean(samples: torch.Tensor, expected: float) -> None:
    tol = 5 * float(samples.std()) / math.sqrt(samples.numel())
    assert abs(float(samples.mean()) - expected) <= tol, (float(samples.mean()), expected, tol)


def _assert_probability(samples: torch.Tensor, expected: float) -> None:
    tol = 5 * math.sqrt(expected * (1 - expected) / samples.numel())
    p = float((samples != 0).double().mean())
    assert abs(p - expected) <= tol, (p, expected, tol)


# -- LocalZO: golden facts (Mukhoty et al., NeurIPS 2023) ------------------------------------------------------


def test_localzo_expected_derivative_normal():
    # E[g(u)] = phi(u / delta) / delta: the Gaussian surrogate of standard deviation delta
    grads = _derivative_samples({"localzo": {"delta": 0.5, "seed": 0}}, [0.0, 0.25, 0.5, 1.0])
    for row, expected in zip(grads, [0.79788, 0.70413, 0.48394, 0.10798]):
        _assert_mean(row, expected)
    narrow = _derivative_samples({"localzo": {"delta": 0.05, "seed": 1}}, [0.0])
    _assert_mean(narrow[0], 7.97885)


def test_localzo_expected_derivative_uniform_and_laplace():
    uniform = _derivative_samples({"localzo": {"distribution": "uniform", "seed": 2}}, [0.0])
    _assert_mean(uniform[0], 0.866025)  # E|z| / (2 delta) = (sqrt 3 / 2) / 1
    laplace = _derivative_samples({"localzo": {"distribution": "laplace", "seed": 3}}, [0.0])
    _assert_mean(laplace[0], 1 / math.sqrt(2))  # unit variance: E|z| = scale = 1/sqrt 2
    # the spread, not only the mean: P(g != 0) at u = 0.25 with m = 1 is P(|z| > 0.5)
    u = _derivative_samples({"localzo": {"distribution": "uniform", "samples": 1, "seed": 4}}, [0.25])
    _assert_probability(u[0], 1 - 0.5 / math.sqrt(3))
    lap = _derivative_samples({"localzo": {"distribution": "laplace", "samples": 1, "seed": 5}}, [0.25])
    _assert_probability(lap[0], math.exp(-math.sqrt(2) * 0.5))


@pytest.mark.parametrize(("samples", "u", "expected"), [(1, 0.25, 0.6171), (5, 0.25, 0.9918), (1, 1.0, 0.0455),
                                                         (5, 1.0, 0.2077)])
def test_localzo_sparsity(samples, u, expected):
    # P(g != 0) = 1 - P(|z| <= |u| / delta)^m, delta = 0.5
    grads = _derivative_samples({"localzo": {"samples": samples, "seed": 6}}, [u])
    _assert_probability(grads[0], expected)


def test_localzo_is_exactly_zero_outside_delta_times_the_largest_draw():
    s = snnbridge.surrogate({"localzo": {"samples": 2, "delta": 0.5}})
    # hand-worked: draws |z| = 1 and 2 give windows delta|z| = 0.5 and 1.0, the indicator is strict
    u = torch.tensor([0.0, 0.25, -0.5, 0.5, 0.75, 1.0, -1.0, 1.5])
    abs_z = torch.tensor([[1.0] * 8, [2.0] * 8])
    assert s.estimate(u, abs_z).tolist() == [1.5, 1.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # a real backward: its draws are those of a copy of the seeded surrogate
    s = snnbridge.surrogate({"localzo": {"seed": 11}})
    x = (torch.linspace(-2.5, 2.5, 5001, dtype=torch.float64)).requires_grad_(True)
    twin = copy.deepcopy(s)
    s(x).sum().backward()
    draws = twin.magnitudes(x.detach())
    assert torch.equal(x.grad, twin.estimate(x.detach(), draws))
    outside = x.detach().abs() >= 0.5 * draws.max(0).values
    assert outside.any() and (~outside).any()
    assert torch.all(x.grad[outside] == 0) and torch.all(x.grad[~outside] > 0)


def test_localzo_draws_fresh_samples_per_call_and_seeds_reproduce():
    x = torch.zeros(2000, dtype=torch.float64, requires_grad=True)

    def grad(s):
        x.grad = None
        s(x).sum().backward()
        return x.grad.clone()

    for seed in (None, 5):
        s = snnbridge.surrogate({"localzo": {"seed": seed, "samples": 1}})
        a, b = grad(s), grad(s)
        assert not torch.equal(a, b)  # fresh per call
        assert len(set(a.tolist())) > 1000  # fresh per element
    s1, s2 = (snnbridge.surrogate({"localzo": {"seed": 5}}) for _ in range(2))
    first = grad(s1)
    assert torch.equal(first, grad(s2))  # the same seed, the same backward
    assert not torch.equal(grad(s1), first)
    s1.manual_seed(5)
    assert torch.equal(grad(s1), first)  # restarted


class _Counting(Surrogate):
    """A triangle surrogate counting its derivative calls (module level: pickles)."""

    calls = 0

    def derivative(self, x):
        type(self).calls += 1
        return (1 - x.abs()).clamp_min(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_derivative_is_called_once_per_spike_tensor_and_backward(backend):
    _Counting.calls = 0
    x = torch.rand(5, 2, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    r = simulate(NeuronSpec(threshold=0.6), x, backend=backend, surrogate=_Counting())
    assert _Counting.calls == 0
    r.spikes.sum().backward()
    assert _Counting.calls == 5  # one spike tensor per step


# -- classic surrogates (plugin sg) ------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "x", "expected"), [
    ({"shape": "triangle"}, [0.0, 0.5, -0.25, 1.0, 2.0], [1.0, 0.5, 0.75, 0.0, 0.0]),  # (1/g^2) max(0, g - |x|)
    ({"shape": "triangle", "alpha": 0.5}, [0.0, 0.25, 0.5], [2.0, 1.0, 0.0]),
    ({"shape": "sigmoid"}, [0.0], [1.0]),  # k s (1 - s) = 4 / 4
    ({"shape": "atan"}, [0.0, 1 / math.pi, -1 / math.pi], [1.0, 0.5, 0.5]),  # (a/2) / (1 + (pi a x / 2)^2)
    ({"shape": "fast_sigmoid"}, [0.0, 0.04, -0.12], [1.0, 0.25, 0.0625]),  # 1 / (1 + 25 |x|)^2
])
def test_classic_shapes_hand_values(options, x, expected):
    s = snnbridge.surrogate({"sg": options})
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    spikes = s(x)
    assert spikes.tolist() == [float(v >= 0) for v in x.tolist()] and spikes.dtype == torch.float64
    spikes.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_sigmoid_closed_form_off_zero():
    s = snnbridge.surrogate({"sg": {"shape": "sigmoid", "alpha": 4.0}})
    x = torch.tensor([0.3, -0.7], dtype=torch.float64)
    e = torch.exp(-4 * x)
    torch.testing.assert_close(s.derivative(x), 4 * e / (1 + e) ** 2, rtol=1e-12, atol=0)


class _Smooth(torch.autograd.Function):
    """The surrogate's primitive forward and its derivative backward: what gradcheck compares."""

    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x)
        ctx.s = s
        return s.primitive(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.s.derivative(x), None


@pytest.mark.parametrize("shape", ["triangle", "sigmoid", "atan", "fast_sigmoid"])
@pytest.mark.parametrize("alpha", [None, 0.7])
def test_classic_derivative_is_the_primitive_derivative(shape, alpha):
    s = snnbridge.surrogate({"sg": {"shape": shape, "alpha": alpha}})
    x = torch.linspace(-2.05, 2.05, 42, dtype=torch.float64).requires_grad_(True)  # off the kinks 0, +-alpha
    x = x[(x.detach().abs() - 0.7).abs() > 1e-3].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: _Smooth.apply(v, s), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


# -- the same surrogate on every backend ---------------------------------------------------------------------------


def _grads(backend, spec, x, surrogate):
    x = x.clone().requires_grad_(True)
    r = simulate(spec, x, backend=backend, surrogate=surrogate)
    weights = torch.linspace(-1, 2, r.spikes.numel(), dtype=x.dtype).view_as(r.spikes)
    (r.spikes * weights).sum().backward()
    return r.spikes.detach(), x.grad


@pytest.mark.parametrize("threshold", [1.0, torch.tensor([1.0, 0.75, 0.5])], ids=["scalar", "per-channel"])
@pytest.mark.parametrize("shape", ["triangle", "atan"])
def test_forward_spikes_identical_and_gradients_equal_across_backends(threshold, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 3, 4, generator=g, dtype=torch.float64) * 0.8
    x[1, 0, 0, 0] = 0.5  # with v0 = 0.5: m = 1.0 exactly at a threshold-1 neuron (a tie fires)
    spec = NeuronSpec(threshold=threshold, v0=0.5)
    s = snnbridge.surrogate({"sg": {"shape": shape}})
    ref_spikes, ref_grad = _grads("torch", spec, x, s)
    ref_plain = simulate(spec, x, backend="torch").spikes  # the in-place no-grad path
    assert torch.equal(ref_spikes, ref_plain) and ref_grad.abs().sum() > 0
    for backend in ("spikingjelly", "snntorch"):
        spikes, grad = _grads(backend, spec, x, snnbridge.surrogate({"sg": {"shape": shape}}, framework=backend))
        assert torch.equal(spikes, ref_spikes), backend
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_per_channel_spikingjelly_site_trains_with_genuine_neurons():
    from spikingjelly.activation_based import neuron

    spec = NeuronSpec(threshold=torch.tensor([1.0, 0.5]))
    layer = snnbridge.make_neuron_factory("spikingjelly")(spec)
    assert isinstance(layer.nodes[0], neuron.ActivationAwareIFNode) and layer.nodes[0].detach_reset
    x = torch.rand(4, 3, 2, 5, generator=torch.Generator().manual_seed(1))
    spikes, grad = _grads("spikingjelly", spec, x, snnbridge.surrogate("localzo"))
    assert torch.equal(spikes, simulate(spec, x, backend="torch").spikes)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_framework_natives_match_the_classic_shapes():
    from snntorch import surrogate as st
    from spikingjelly.activation_based import surrogate as sj

    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 2, 6, generator=g, dtype=torch.float64) * 0.6
    x[0:3, 0, 0] = 0.25  # with v0 = 0.25: m = 0.5, 0.75, 1.0 - the threshold exactly at step 3
    spec = NeuronSpec(threshold=1.0, v0=0.25)
    pairs = [("spikingjelly", sj.ATan(), "atan"), ("spikingjelly", sj.Sigmoid(), "sigmoid"),
             ("spikingjelly", sj.PiecewiseQuadratic(alpha=1.0), "triangle"), ("snntorch", st.atan(), "atan"),
             ("snntorch", None, "atan")]  # None: snnTorch's default of the adapter (arc-tangent, alpha 2)
    for backend, native, shape in pairs:
        spikes, grad = _grads(backend, spec, x, native)
        ref_spikes, ref_grad = _grads("torch", spec, x, snnbridge.surrogate({"sg": {"shape": shape}}))
        assert ref_spikes[2, 0, 0] == 1  # the tie fired
        assert torch.equal(spikes, ref_spikes), (backend, shape)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-7)


def test_snntorch_natives_are_wrapped_to_fire_on_ties():
    from snntorch import surrogate as st

    from snnbridge.adapters.snntorch import TiesFire

    wrapped = snnbridge.get_registry().call("snntorch", "snnbridge_wrap_surrogate", surrogate=st.fast_sigmoid())
    assert isinstance(wrapped, TiesFire)
    x = torch.tensor([-0.5, 0.0, 0.5], requires_grad=True)
    out = wrapped(x)
    assert out.tolist() == [0.0, 1.0, 1.0]
    out.sum().backward()
    torch.testing.assert_close(x.grad, 1 / (1 + 25 * x.detach().abs()) ** 2)


# -- the objects each framework takes -------------------------------------------------------------------------------


def test_framework_objects_are_what_the_frameworks_take():
    import snntorch
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based import surrogate as sj

    core = snnbridge.surrogate({"sg": {"shape": "triangle"}})
    assert isinstance(core, Surrogate) and snnbridge.surrogate(core) is core
    sj_fn = snnbridge.surrogate({"sg": {"shape": "triangle"}}, framework="spikingjelly")
    assert isinstance(sj_fn, sj.SurrogateFunctionBase) and sj_fn.spiking
    st_fn = snnbridge.surrogate(core, framework="snntorch")
    assert st_fn.surrogate is core
    x = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(3)) * 0.7
    ours = simulate(NeuronSpec(threshold=0.5), x, backend="torch").spikes
    node = neuron.IFNode(v_threshold=0.5, v_reset=None, step_mode="m", surrogate_function=sj_fn)
    assert torch.equal(node(x), ours)  # SpikingJelly's own neuron with our surrogate
    lif = snntorch.Leaky(beta=1.0, threshold=0.5, spike_grad=st_fn, reset_mechanism="subtract")
    mem, spikes = torch.zeros(2, 3), []
    for t in range(4):
        spk, mem = lif(x[t], mem)
        spikes.append(spk)
    assert torch.equal(torch.stack(spikes), ours)
    sj_fn.set_spiking_mode(False)  # SpikingJelly's non-spiking mode: the smooth primitive
    torch.testing.assert_close(sj_fn(torch.tensor([0.0, 1.0])), torch.tensor([0.5, 1.0]))


def test_surrogates_pickle_and_copy():
    for recipe in ("localzo", {"sg": {"shape": "sigmoid"}}):
        for framework in BACKENDS:
            obj = snnbridge.surrogate(recipe, framework=framework)
            back = pickle.loads(pickle.dumps(obj))
            assert type(back) is type(obj) and repr(back) == repr(obj)
            assert repr(copy.deepcopy(obj)) == repr(obj)
    s = snnbridge.surrogate({"localzo": {"seed": 9}})
    x = torch.zeros(100, requires_grad=True)
    s(x).sum().backward()  # the generator exists and has moved
    twin = pickle.loads(pickle.dumps(s))
    assert torch.equal(s.magnitudes(x), twin.magnitudes(x))  # the stream continues in the copy


# -- errors ----------------------------------------------------------------------------------------------------


class _NotASurrogate:
    name = "notasurrogate"

    @hookimpl
    def snnbridge_plugin_info(self):
        return snnbridge.PluginInfo(summary="x", kind="training", provides=("surrogate",))

    @hookimpl
    def snnbridge_surrogate(self, options):
        return lambda x: (x >= 0).float()


class _WrongShape(Surrogate):
    def derivative(self, x):
        return x.sum()


@pytest.mark.parametrize(("recipe", "error", "pattern"), [
    ({"localzo": {"detla": 0.1}}, OptionError, r"Did you mean 'delta'"),
    ({"localzo": {"delta": 0.0}}, OptionError, r"0 < delta"),
    ({"sg": {"shape": "triangel"}}, OptionError, r"Did you mean 'triangle'"),
    (["localzo", "sg"], PluginConflictError, r"2 surrogates .*Keep one"),
    ([], MissingRequirementError, r"e\.g\. 'localzo'"),
    ([module_plugin("aloss", kind="training", provides=("training_loss",))], MissingRequirementError,
     r"names no surrogate"),
    (["maxnorm"], PluginConflictError, r"conversion method.*snnbridge\.convert"),
    (["torch"], PluginConflictError, r"framework='torch'"),
    (["localzoo"], UnknownPluginError, r"Did you mean 'localzo'"),
    ([_NotASurrogate()], PluginError, r"must return a snnbridge\.Surrogate"),
])
def test_surrogate_recipe_errors(recipe, error, pattern):
    with pytest.raises(error, match=pattern):
        snnbridge.surrogate(recipe)


def test_a_training_recipe_serves_the_surrogate():
    loss = module_plugin("aloss", kind="training", provides=("training_loss",))
    s = snnbridge.surrogate([loss, {"localzo": {"delta": 0.05, "samples": 1}}])  # the loss plugin is skipped
    assert s.source == {"localzo": {"distribution": "normal", "samples": 1, "delta": 0.05, "seed": None}}
    assert (s.delta, s.samples) == (0.05, 1)


def test_framework_errors_and_mismatches():
    from snntorch import surrogate as st
    from spikingjelly.activation_based import surrogate as sj

    with pytest.raises(UnknownPluginError, match="Did you mean 'snntorch'"):
        snnbridge.surrogate("sg", framework="snntroch")
    with pytest.raises(BackendError, match="method plugin, not a neuron backend"):
        snnbridge.surrogate("sg", framework="maxnorm")
    spec, x = NeuronSpec(threshold=1.0), torch.rand(3, 2, 4)
    cases = [("spikingjelly", snnbridge.surrogate("sg", framework="snntorch"), r"framework='spikingjelly'"),
             ("spikingjelly", st.atan(), r"snnTorch spike_grad.*snntorch backend only"),
             ("spikingjelly", sj.ATan(spiking=False), r"set_spiking_mode\(True\)"),
             ("snntorch", sj.ATan(), r"SpikingJelly surrogate.*spikingjelly backend only"),
             ("snntorch", snnbridge.surrogate("sg", framework="spikingjelly"), r"framework='snntorch'"),
             ("snntorch", lambda v: v * 2, r"does not return 0/1 spikes"),
             ("torch", sj.ATan(), r"snnbridge\.surrogate\('localzo'\)"),
             ("torch", snnbridge.surrogate("sg", framework="snntorch"), r"framework='torch'")]
    for backend, obj, pattern in cases:
        with pytest.raises(BackendError, match=pattern):
            simulate(spec, x, backend=backend, surrogate=obj)
    wrong = torch.zeros(3, requires_grad=True)
    with pytest.raises(PluginError, match="shaped like x"):
        _WrongShape()(wrong).sum().backward()
    with pytest.raises(InputError, match=r"x\.float\(\)"):
        snnbridge.surrogate("sg")(torch.zeros(3, dtype=torch.long))
    fused = snnbridge.make_neuron_factory("spikingjelly", {"kernel": "triton"})
    layer = fused(spec)
    layer.set_surrogate(fused.wrap_surrogate(sj.ATan()))  # a built-in: the fused kernels know it
    with pytest.raises(BackendError, match=r"seven built-in surrogates.*kernel='auto'"):
        layer.set_surrogate(fused.wrap_surrogate(snnbridge.surrogate("localzo")))


def test_a_surrogate_is_not_a_conversion_step(calib_batches):
    with pytest.raises(PluginConflictError, match=r"not a conversion step.*snn\.set_surrogate"):
        snnbridge.convert(zoo.small_resnet(), ["maxnorm", "localzo"], calibration=calib_batches, progress=False)
    with pytest.raises(PluginConflictError, match=r"not a conversion step"):
        snnbridge.prepare(zoo.small_resnet(), ["qcfs", {"sg": {"shape": "atan"}}])
