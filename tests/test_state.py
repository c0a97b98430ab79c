"""State that behaves: repeated and interleaved runs, train/eval, dtypes, copies, and threads."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

import snnbridge
from helpers import zoo
from snnbridge import InputError

BACKENDS = ["torch", "spikingjelly", "snntorch"]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(11)
    return [torch.rand(8, 3, 8, 8, generator=g) for _ in range(2)], torch.rand(7, 3, 8, 8, generator=g)


def _convert(data, backend="torch", recipe=("maxnorm",), model=None, T=5):
    calib, _ = data
    return snnbridge.convert(model if model is not None else zoo.small_resnet(), list(recipe), calibration=calib,
                             backend=backend, timesteps=T, progress=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_and_interleaved_batch_sizes(backend, data):
    _, x = data
    snn = _convert(data, backend, [{"robustnorm": {"channelwise": True}}, {"ftbc": {"iterations": 1}}])
    first, small, big = snn.sweep(x), snn.sweep(x[:2]), snn.sweep(x)
    assert torch.equal(first, big)  # no state leaks from one run into the next
    assert torch.equal(small, first[:, :2])  # samples are independent whatever the batch around them
    snn.time_chunk = 2
    # chunks of 2 steps run the convolutions on [2 * 3] instead of [5 * 7] rows: on some CPUs the kernels round
    # differently with the row count (1 ulp seen), so equal up to float rounding, not bit for bit
    torch.testing.assert_close(snn.sweep(x[:3]), first[:, :3])


def _kept_bn_net() -> nn.Module:
    """A BatchNorm on the input has no conv before it to fold into: the conversion keeps it."""
    torch.manual_seed(2)
    return zoo.randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                          nn.Linear(4 * 6 * 6, 3))).eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_mode_keeps_the_anns_statistics(backend, data):
    _, x = data
    snn = _convert(data, backend, model=_kept_bn_net())
    assert snn.report["graph"]["kept_bn"], "the test needs a BatchNorm the conversion keeps"
    expected = snn(x)
    snn.train()
    assert snn.training and all(n.training for s in snn.sites.values() for n in s.neuron.modules())
    bns = [m for m in snn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    stats = bns[0].running_mean.clone()
    with torch.no_grad():
        assert torch.equal(snn(x), expected)  # batch statistics over the merged time steps would change it
    assert torch.equal(bns[0].running_mean, stats)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_and_half(backend, data):
    _, x = data
    snn = _convert(data, backend)
    ref = snn.sweep(x)
    double = copy.deepcopy(snn).double()
    out = double.sweep(x)  # a float32 batch is cast to the model's dtype
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=1e-5)
    half = copy.deepcopy(snn).half()
    out = half(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref[-1], rtol=0, atol=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcopy_is_independent(backend, data):
    _, x = data
    snn = _convert(data, backend)
    twin = copy.deepcopy(snn)
    assert torch.equal(twin.sweep(x), snn.sweep(x))
    name = next(iter(twin.sites))
    twin.set_spec(name, twin.specs[name].replace(threshold=twin.specs[name].threshold * 2))
    assert not torch.equal(twin.sweep(x), snn.sweep(x))
    assert snn.specs[name].threshold != twin.specs[name].threshold


def test_two_snns_from_one_ann_run_in_parallel_threads(data):
    _, x = data
    ann = zoo.small_resnet()
    a, b = _convert(data, model=ann, T=6), _convert(data, "spikingjelly", [{"robustnorm": {}}], model=ann, T=9)
    a.time_chunk = b.time_chunk = 2  # many chunks: the runs interleave
    expected = {"a": a.sweep(x), "b": b.sweep(x)}
    results, errors = {}, []

    def work(key, snn):
        try:
            for _ in range(3):
                out = snn.sweep(x)
                assert torch.equal(out, expected[key])
            results[key] = True
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k, s)) for k, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == {"a": True, "b": True}


def test_one_snn_used_from_two_threads_says_it_cannot(data):
    _, x = data
    snn = _convert(data)
    inside, release = threading.Event(), threading.Event()

    def hold(module, args, output):
        inside.set()
        release.wait(30)

    handle = snn.graph_module.conv1.register_forward_hook(hold)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("out", snn(x)))
    worker.start()
    try:
        assert inside.wait(30)
        with pytest.raises(InputError, match=r"another thread.*copy\.deepcopy\(snn\)"):
            snn(x)
    finally:
        release.set()
        worker.join(30)
        handle.remove()
    assert torch.equal(outcome["out"], snn(x))  # the first thread's run was not disturbed, and the model is free
    twin = copy.deepcopy(snn)  # a copy made while idle runs on its own
    assert torch.equal(twin(x), outcome["out"])
