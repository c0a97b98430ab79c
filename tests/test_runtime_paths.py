"""The optimised runtime paths give the reference results: same spikes, same outputs.

Static prefix once per run, cache-sized time chunks, the affine tail on means, ``run(until=)``,
weighted spikes written by the adapters, and the compiled neuron update, each against the
plain per-step path on every backend.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from helpers import zoo

BACKENDS = ("torch", "spikingjelly", "snntorch")


@pytest.fixture(scope="module")
def converted():
    model = zoo.small_resnet()
    g = torch.Generator().manual_seed(1)
    calib = [torch.rand(16, 3, 8, 8, generator=g) for _ in range(3)]
    return {b: snnbridge.convert(model, [{"robustnorm": {"channelwise": True}}, "opi"], calibration=calib,
                                 backend=b, timesteps=12, progress=False) for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_and_prefix_once_match_one_pass(converted, test_input, backend):
    snn = converted[backend]
    calls = []
    conv1 = snn.graph_module.get_submodule("conv1")
    handle = conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        snn.time_chunk = None
        with snn.record(keep=("spikes", "v")) as whole:
            ref = snn.run(test_input)
        for chunk in (1, 5):
            calls.clear()
            snn.time_chunk = chunk
            with snn.record(keep=("spikes", "v")) as rec:
                got = snn.run(test_input)
            assert calls == [test_input.shape[0]]  # the static prefix runs once per run, whatever the chunking
            assert torch.equal(got, ref)
            for name in snn.sites:
                assert torch.equal(rec[name].spikes, whole[name].spikes)
                if backend == "snntorch":  # it charges a chunk's first step as 0 + (x + v): the membrane moves by ulps
                    torch.testing.assert_close(rec[name].v, whole[name].v, rtol=0, atol=1e-5)
                else:
                    assert torch.equal(rec[name].v, whole[name].v)
    finally:
        snn.time_chunk = None
        handle.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_on_means_equals_the_per_step_path(converted, test_input, backend):
    snn = converted[backend]
    assert snn.plan.tail_is_affine  # adaptive pooling, flatten and the linear head
    fast = snn(test_input)
    snn.forward_on_means = False
    try:
        slow = snn(test_input)
    finally:
        snn.forward_on_means = True
    assert torch.equal(slow, snn.run(test_input).mean(0))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    sweep = snn.sweep(test_input)  # sweep stays per step; each entry is the forward of that T
    for T in (1, 5, 12):
        torch.testing.assert_close(sweep[T - 1], snn(test_input, timesteps=T), rtol=1e-5, atol=1e-6)


def test_forward_on_means_respects_the_decode_window(test_input):
    net = zoo.mlp(3 * 8 * 8, 16, 8, 4)
    flat = nn.Sequential(nn.Flatten(), net).eval()
    snn = snnbridge.convert(flat, ["maxnorm"], calibration=[torch.rand(32, 3, 8, 8)], timesteps=10, progress=False)
    snn.decode_window = snnbridge.DecodeWindow(delay=3, keep=2)
    per_step = snn.run(test_input)
    torch.testing.assert_close(snn(test_input), per_step[3:].mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(snn(test_input, timesteps=4), snn.run(test_input, 4)[2:].mean(0), rtol=1e-5, atol=1e-6)


def test_a_non_affine_tail_keeps_the_per_step_path(test_input):
    class SpikeMaxPoolHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)  # after the neurons' adds: pools weighted spikes per step
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(torch.flatten(self.pool(y + y), 1))

    snn = snnbridge.convert(SpikeMaxPoolHead().eval(), ["maxnorm"], calibration=[torch.rand(8, 3, 8, 8)], timesteps=6,
                            progress=False)
    assert not snn.plan.tail_is_affine
    assert torch.equal(snn(test_input), snn.run(test_input).mean(0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_until_a_site_matches_the_full_run(converted, test_input, backend):
    snn = converted[backend]
    names = list(snn.sites)
    with snn.record(keep=("spikes", "output")) as full:
        snn.run(test_input)
    for name in names:
        with snn.record(keep=("spikes", "output")) as part:
            out = snn.run(test_input, until=name)
        assert torch.equal(out, full[name].output)
        ran = [n for n in names if part.runs[0][n].spikes is not None]
        assert ran == names[:names.index(name) + 1]  # only the sites it depends on ran
        for n in ran:
            assert torch.equal(part[n].spikes, full[n].spikes)
    with pytest.raises(snnbridge.InputError, match="no site 'nope'"):
        snn.run(test_input, until="nope")


def test_adapters_weighted_output_equals_spikes_times_threshold():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 5, 3, 4, generator=g, dtype=torch.float64) * 2 - 0.5
    for th in (0.3, torch.tensor([0.3, 0.7, 1.1])):
        spec = snnbridge.NeuronSpec(threshold=th, v0=0.1)
        for backend in BACKENDS:
            if backend == "spikingjelly":
                continue  # SpikingJelly's kernels take float32 state
            r = snnbridge.simulate(spec, x, backend=backend, return_v=True)
            thb = spec.threshold_tensor(x[0], 1)
            torch.testing.assert_close(r.weighted(thb), r.spikes * thb, rtol=0, atol=0)
            assert set(r.spikes.unique().tolist()) <= {0.0, 1.0}


def test_compiled_neuron_update_is_bit_identical_to_eager(small_resnet, calib_batches, test_input):
    """The torch backend's ``compile`` option (torch.compile takes ~10 s here the first time)."""
    from snnbridge.adapters import torch_ref

    eager = snnbridge.convert(small_resnet, [{"robustnorm": {"channelwise": True}}, "opi"], calibration=calib_batches,
                              timesteps=8, progress=False)
    compiled = snnbridge.convert(small_resnet, [{"robustnorm": {"channelwise": True}}, "opi"],
                                 calibration=calib_batches, timesteps=8, backend_options={"compile": True},
                                 progress=False)
    with torch.no_grad():
        assert torch.equal(compiled.run(test_input), eager.run(test_input))
        compiled.time_chunk = 3
        assert torch.equal(compiled.run(test_input), eager.run(test_input))
    assert not torch_ref._compiled["failed"], "torch.compile fell back to eager: the compiled path was not tested"


_SYNCING = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "cpu", "numpy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_sync_per_step(converted, test_input, backend, monkeypatch):
    """On a GPU each read of a tensor value on the host (bool(t), t.item(), .cpu(), ...) waits for the device;
    the runtime may do that once per call (input checks) but never once per step: the count must not grow
    with T, for forward and sweep."""
    calls = {"n": 0}
    for name in _SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            calls["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    snn = converted[backend]
    counts = {}
    with torch.no_grad():
        for T in (4, 16):
            for run in ("forward", "sweep"):
                calls["n"] = 0
                snn(test_input, timesteps=T) if run == "forward" else snn.sweep(test_input, timesteps=T)
                counts[run, T] = calls["n"]
    assert counts["forward", 4] == counts["forward", 16], counts
    assert counts["sweep", 4] == counts["sweep", 16], counts
    assert 1 <= counts["forward", 4] <= 8, counts  # the input check reads one value; a handful per call at most
