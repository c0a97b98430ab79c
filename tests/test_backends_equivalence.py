"""Cross-backend equivalence on a converted network, framework tools on converted models, adapter errors.

The same recipe converted on ``torch`` (reference), ``spikingjelly`` and ``snntorch`` must give
identical spikes at every site and the same output. SpikingJelly's neurons are bit-identical
to the reference (same operations in the same order). snnTorch evaluates the charge as
``(m + x) - theta*s`` instead of ``(m - theta*s) + x`` (see adapters/snntorch.py): the
membranes may differ by float rounding, so its outputs are compared with a tolerance while
spikes are still required to be identical on this data (a spike could move only when the
membrane lands within a few ulps of the threshold).
"""

from __future__ import annotations

import sys

import pytest
import torch

import snnbridge
from helpers import zoo
from snnbridge import BackendError, NeuronSpec, OptionError, simulate

BACKENDS = ("torch", "spikingjelly", "snntorch")
RECIPES = {
    "maxnorm": ["maxnorm"],
    "robustnorm_channelwise": [{"robustnorm": {"percentile": 99.9, "channelwise": True}}],
}
#: output tolerance, relative to the largest reference output (float32)
REL_ATOL = 1e-5


def run_recording(snn, x):
    """Output of ``snn(x)`` plus, per site, the spikes ``[T, B, ...]`` and post-reset membranes it produced."""
    with torch.no_grad(), snn.record(keep=("spikes", "v")) as rec:
        y = snn(x)
    return y, {name: (rec[name].spikes, rec[name].v) for name in snn.sites}


@pytest.fixture(scope="module")
def converted():
    """{(recipe, backend): SpikingModel} for the shared small residual network (built once)."""
    model = zoo.small_resnet()
    g = torch.Generator().manual_seed(1)
    calib = [torch.rand(16, 3, 8, 8, generator=g) for _ in range(4)]
    return {(r, b): snnbridge.convert(model, recipe, calibration=calib, backend=b, timesteps=16, progress=False)
            for r, recipe in RECIPES.items() for b in BACKENDS}


@pytest.mark.parametrize("timesteps", [16, 64])
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_identical_spikes_and_outputs(converted, test_input, recipe, backend, timesteps):
    ref = converted[(recipe, "torch")]
    snn = converted[(recipe, backend)]
    ref.timesteps = snn.timesteps = timesteps
    try:
        y_ref, s_ref = run_recording(ref, test_input)
        y, s = run_recording(snn, test_input)
    finally:
        ref.timesteps = snn.timesteps = 16
    assert set(s) == set(s_ref) == set(snn.sites)
    total = 0
    for name, (spikes_ref, v_ref) in s_ref.items():
        spikes, v = s[name]
        assert spikes.shape == spikes_ref.shape == (timesteps, *spikes.shape[1:])
        mismatch = int((spikes != spikes_ref).sum())
        assert mismatch == 0, f"site {name}: {mismatch} spikes differ from the torch reference on {backend}"
        if backend == "spikingjelly":
            assert torch.equal(v, v_ref), f"site {name}: membrane differs"
        else:
            torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-5 * max(1.0, float(v_ref.abs().max())))
        total += int(spikes.sum())
    assert total > 0
    scale = max(1.0, float(y_ref.abs().max()))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=REL_ATOL * scale)
    if backend == "spikingjelly":
        assert torch.equal(y, y_ref)


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_long_run_random_floats_per_site(backend):
    """T = 64 of random float drive through ``snnbridge.simulate`` (no network): spikes identical."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(64, 4, 6, 5, 5, generator=g) * 0.6 + 0.3
    th = torch.rand(6, generator=g) + 0.4
    for spec in (NeuronSpec(threshold=0.83, v0=0.41), NeuronSpec(threshold=th, v0=th / 2),
                 NeuronSpec(threshold=th, v0=torch.rand(6, 5, 5, generator=g) * 2, step_bias=0.01)):
        ref = simulate(spec, x, backend="torch", return_v=True)
        got = simulate(spec, x, backend=backend, return_v=True)
        assert torch.equal(got.spikes, ref.spikes)
        torch.testing.assert_close(got.v_seq, ref.v_seq, rtol=0, atol=1e-5)
    # a Linear site: [T, B, F], the features are the channels
    x = torch.randn(64, 4, 7, generator=g) * 0.6 + 0.3
    th = torch.rand(7, generator=g) + 0.4
    spec = NeuronSpec(threshold=th, v0=torch.rand(7, generator=g))
    ref = simulate(spec, x, backend="torch", return_v=True)
    got = simulate(spec, x, backend=backend, return_v=True)
    assert torch.equal(got.spikes, ref.spikes) and ref.spikes.sum() > 0
    torch.testing.assert_close(got.v_last, ref.v_last, rtol=0, atol=1e-5)


def test_time_chunks_do_not_change_results(converted, test_input):
    for backend in ("spikingjelly", "snntorch"):
        snn = converted[("robustnorm_channelwise", backend)]
        with torch.no_grad():
            whole = snn(test_input)
            snn.time_chunk = 5
            try:
                chunked = snn(test_input)
            finally:
                snn.time_chunk = None
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


# -- the frameworks' own tools on converted models ---------------------------------------------------------


def test_spikingjelly_neurons_are_genuine(converted):
    from spikingjelly.activation_based import base, neuron

    for recipe, kind in (("maxnorm", neuron.IFNode), ("robustnorm_channelwise", neuron.ActivationAwareIFNode)):
        snn = converted[(recipe, "spikingjelly")]
        for site in snn.sites.values():
            nodes = list(site.neuron.nodes)
            assert len(nodes) == 1 and type(nodes[0]) is kind
            node = nodes[0]
            assert isinstance(node, base.MemoryModule) and node.v_reset is None and node.step_mode == "m"
        found = [m for m in snn.modules() if isinstance(m, kind)]
        assert len(found) == len(snn.sites)  # reachable through net.modules(), where SpikingJelly's tools look
    node = converted[("robustnorm_channelwise", "spikingjelly")].sites["relu"].neuron.nodes[0]
    assert node.channel_dim == 1 and node.v_threshold.dim() == 1 and float(node.v_offset) == 0.0


def test_spikingjelly_reset_net_and_set_step_mode(converted, test_input):
    from spikingjelly.activation_based import functional

    snn = converted[("robustnorm_channelwise", "spikingjelly")]
    nodes = [n for s in snn.sites.values() for n in s.neuron.nodes]
    with torch.no_grad():
        y = snn(test_input)
        assert all(isinstance(n.v, torch.Tensor) for n in nodes)
        functional.reset_net(snn)
        assert all(isinstance(n.v, float) and n.v == 0.0 for n in nodes)
        assert torch.equal(snn(test_input), y)
        functional.set_step_mode(snn, "s")
        try:
            assert all(n.step_mode == "s" for n in nodes)
            y_single = snn(test_input)
        finally:
            functional.set_step_mode(snn, "m")
    assert torch.equal(y_single, y)


def test_snntorch_neurons_are_genuine(converted):
    import snntorch

    from snnbridge.adapters.snntorch import fire_ge

    for recipe in RECIPES:
        snn = converted[(recipe, "snntorch")]
        leakies = [m for m in snn.modules() if isinstance(m, snntorch.Leaky)]
        assert len(leakies) == len(snn.sites)
        for lif in leakies:
            assert float(lif.beta) == 1.0 and lif.reset_mechanism == "subtract" and lif.reset_delay
            assert lif.spike_grad is fire_ge


def test_state_dict_round_trip(converted, test_input, small_resnet, calib_batches):
    """A state_dict taken after a run loads into a freshly converted model (buffers keep their shapes)."""
    for backend in ("spikingjelly", "snntorch"):
        snn = converted[("robustnorm_channelwise", backend)]
        with torch.no_grad():
            y = snn(test_input)
        fresh = snnbridge.convert(small_resnet, RECIPES["robustnorm_channelwise"], calibration=calib_batches,
                                  backend=backend, timesteps=16, progress=False)
        fresh.load_state_dict(snn.state_dict())
        with torch.no_grad():
            assert torch.equal(fresh(test_input), y)


def test_snntorch_utils_reset(converted, test_input):
    import snntorch.utils

    snn = converted[("robustnorm_channelwise", "snntorch")]
    with torch.no_grad():
        y = snn(test_input)
        snntorch.utils.reset(snn)  # scans top-level children only: finds nothing, must not fail
        assert torch.equal(snn(test_input), y)
        layer = next(iter(snn.sites.values())).neuron
        snntorch.utils.reset(layer)  # top-level Leaky: zeroes every Leaky's mem (class-wide)
        assert float(layer.leaky.mem.abs().sum()) == 0.0
        assert torch.equal(snn(test_input), y)


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
@pytest.mark.parametrize("threshold", [1.0, torch.tensor([1.0, 0.7])])
def test_surrogate_gradient_flows(backend, threshold):
    """Converted SNNs can be fine-tuned: gradients reach the input through the frameworks' surrogates."""
    x = torch.full((3, 1, 2), 0.4, requires_grad=True)
    r = simulate(NeuronSpec(threshold=threshold, v0=0.1), x, backend=backend)
    ref = simulate(NeuronSpec(threshold=threshold, v0=0.1), x.detach(), backend="torch")
    assert torch.equal(r.spikes.detach(), ref.spikes)
    r.spikes.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# -- errors -----------------------------------------------------------------------------------------------


def test_cupy_on_spikingjelly_2_is_a_backend_error(small_resnet, calib_batches):
    x = torch.rand(3, 2, 4)
    with pytest.raises(BackendError) as err:
        simulate(NeuronSpec(threshold=1.0), x, backend="spikingjelly", backend_options={"kernel": "cupy"})
    msg = str(err.value)
    assert "removed CuPy" in msg and "automatic" in msg and "spikingjelly==0.0.0.0.14" in msg and "CUDA" in msg
    with pytest.raises(BackendError, match="removed CuPy"):
        snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, backend="spikingjelly",
                          backend_options={"kernel": "cupy"}, progress=False)


def test_gpu_kernels_on_cpu_tensors_are_a_backend_error():
    x = torch.rand(3, 2, 4)
    spec = NeuronSpec(threshold=1.0)
    assert simulate(spec, x, backend="spikingjelly", backend_options={"kernel": "torch"}).spikes.shape == x.shape
    for kernel in ("triton", "cuda"):
        with pytest.raises(BackendError, match="CUDA tensors"):
            simulate(spec, x, backend="spikingjelly", backend_options={"kernel": kernel})


def test_bad_kernel_option_is_an_option_error():
    x = torch.rand(2, 1, 3)
    with pytest.raises(OptionError) as err:
        simulate(NeuronSpec(threshold=1.0), x, backend="spikingjelly", backend_options={"kernel": "cupi"})
    assert "'cupy'" in str(err.value) and "kernel" in str(err.value)
    with pytest.raises(OptionError, match="did you mean|Did you mean"):
        simulate(NeuronSpec(threshold=1.0), x, backend="spikingjelly", backend_options={"kernal": "auto"})
    with pytest.raises(OptionError, match="no option"):
        simulate(NeuronSpec(threshold=1.0), x, backend="snntorch", backend_options={"kernel": "auto"})


@pytest.mark.parametrize("backend, module, install", [
    ("spikingjelly", "spikingjelly.activation_based.neuron", "pip install 'spikingjelly>=2.0'"),
    ("snntorch", "snntorch", "pip install snntorch"),
])
def test_missing_framework_is_a_backend_error(monkeypatch, backend, module, install):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail like an absent package
    with pytest.raises(BackendError) as err:
        simulate(NeuronSpec(threshold=1.0), torch.rand(2, 1, 3), backend=backend)
    assert install in str(err.value) and "backend='torch'" in str(err.value)


@pytest.mark.parametrize("target", [b for b in snnbridge.get_registry().names("backend") if b != "torch"])
def test_to_backend_equals_converting_on_that_backend(small_resnet, calib_batches, test_input, target):
    recipe = ["robustnorm", "opi", {"ftbc": {"batches": 2, "iterations": 1}}]
    here = snnbridge.convert(small_resnet, recipe, calibration=calib_batches, timesteps=6, progress=False)
    there = snnbridge.convert(small_resnet, recipe, calibration=calib_batches, timesteps=6, progress=False,
                              backend=target)
    before = {k: v.clone() for k, v in here.state_dict().items()}
    moved = here.to_backend(target)
    assert moved.backend_name == target and here.backend_name == "torch"
    assert all(torch.equal(v, here.state_dict()[k]) for k, v in before.items())  # the original is unchanged
    with torch.no_grad():
        torch.testing.assert_close(moved.sweep(test_input), there.sweep(test_input), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(moved.sweep(test_input), here.sweep(test_input), atol=1e-5, rtol=1e-5)
    assert moved.decode_window == here.decode_window and moved.steps_run == here.steps_run
    with pytest.raises(snnbridge.UnknownPluginError, match="spikingjely"):
        here.to_backend("spikingjely")


def test_to_backend_moves_a_generic_surrogate_and_warns_for_a_native_one(small_resnet, calib_batches):
    from spikingjelly.activation_based import surrogate as sj_surrogate

    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=4, progress=False,
                            backend="spikingjelly")
    generic = snnbridge.surrogate({"sg": {"shape": "atan"}})
    snn.set_surrogate(generic)
    assert snn.to_backend("snntorch").surrogate is generic
    snn.set_surrogate(sj_surrogate.ATan())
    with pytest.warns(UserWarning, match="belongs to the 'spikingjelly' backend"):
        moved = snn.to_backend("snntorch")
    assert moved.surrogate is None and snn.surrogate is not None
