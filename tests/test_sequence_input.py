"""Time-series input (``time_major=True``) and the clear word on gradients the backend cannot give."""

from __future__ import annotations

import pytest
import torch

import snnbridge
from helpers import zoo
from snnbridge import BackendError, InputError

BACKENDS = ["torch", "spikingjelly", "snntorch"]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    return [torch.rand(8, 3, 8, 8, generator=g) for _ in range(2)], torch.rand(5, 3, 8, 8, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("recipe", [["maxnorm"], [{"robustnorm": {"channelwise": True}}, {"ftbc": {"iterations": 1}}]])
def test_repeated_sequence_equals_the_static_path(backend, recipe, data):
    calib, x = data
    snn = snnbridge.convert(zoo.small_resnet(), recipe, calibration=calib, backend=backend, timesteps=6,
                            progress=False)
    seq = x.unsqueeze(0).expand(6, *x.shape)
    static = snn.sweep(x)
    assert torch.equal(snn.sweep(seq, time_major=True), static)
    snn.time_chunk = 4  # the layers before the first neurons now run per chunk of the sequence
    assert torch.equal(snn.sweep(seq, time_major=True), static)
    assert torch.equal(snn.steps(seq, time_major=True), snn.steps(x))
    torch.testing.assert_close(snn(seq, time_major=True), snn(x), rtol=0, atol=1e-6)  # static: tail on means


def test_a_changing_sequence_is_fed_step_by_step(data):
    """Step t sees x[t]: the output after t steps depends on the first t inputs only."""
    calib, x = data
    snn = snnbridge.convert(zoo.small_resnet(), ["maxnorm"], calibration=calib, timesteps=4, progress=False)
    seq = torch.stack([x, x.flip(0), x * 0.5, torch.zeros_like(x)])
    sweep = snn.sweep(seq, time_major=True)
    assert torch.equal(snn.sweep(seq[:1], time_major=True)[0], snn.sweep(x, timesteps=1)[0])
    assert torch.equal(sweep[:2], snn.sweep(seq[:2], time_major=True))
    assert not torch.equal(sweep[3], snn.sweep(x, timesteps=4)[3])
    assert snn.timesteps == 4 and snn.sweep(seq[:3], time_major=True).shape[0] == 3  # the sequence sets T


def test_layer_lookahead_corrections_accept_sequences(data):
    calib, x = data
    ann = snnbridge.prepare(zoo.small_resnet(), [{"qcfs": {"levels": 4}}])  # rho auto = L = 4 <= the 4-step sequence
    snn = snnbridge.convert(ann, ["qcfs", "cos"], calibration=calib, timesteps=4, progress=False)
    assert snn.lookahead > 0 and snn.warmup == 0
    seq = x.unsqueeze(0).expand(4, *x.shape)
    assert torch.equal(snn.sweep(seq, time_major=True), snn.sweep(x))


def test_sequence_errors(data):
    calib, x = data
    snn = snnbridge.convert(zoo.small_resnet(), ["maxnorm"], calibration=calib, timesteps=4, progress=False)
    seq = x.unsqueeze(0).expand(4, *x.shape)
    with pytest.raises(InputError, match="sequence: pass time_major=True"):
        snn(seq)
    with pytest.raises(InputError, match="static .* batch: drop time_major=True"):
        snn(x, time_major=True)
    with pytest.raises(InputError, match="sequence sets T: leave timesteps out"):
        snn(seq, timesteps=3, time_major=True)
    with pytest.raises(InputError, match="NaN/Inf"):
        snn(torch.full_like(seq, float("nan")), time_major=True)
    warm = snnbridge.convert(snnbridge.prepare(zoo.small_resnet(), ["qcfs"]), ["qcfs", "srp"], calibration=calib,
                             timesteps=4, progress=False)
    with pytest.raises(InputError, match="warm-up steps .* static input only"):
        warm(seq, time_major=True)


# -- gradients ---------------------------------------------------------------------------------------------


def _trainable(backend, data):
    calib, x = data
    snn = snnbridge.convert(zoo.small_resnet(), ["maxnorm"], calibration=calib, backend=backend, timesteps=3,
                            progress=False)
    assert not any(p.requires_grad for p in snn.parameters())  # converted parameters start frozen
    for p in snn.parameters():
        p.requires_grad_(True)
    return snn, x


def test_torch_backend_refuses_a_backward_it_cannot_give(data):
    snn, x = _trainable("torch", data)
    with pytest.raises(BackendError, match="no surrogate gradient.*torch.no_grad.*'spikingjelly' or 'snntorch'"):
        snn(x)
    with torch.no_grad():
        assert torch.isfinite(snn(x)).all()
    for p in snn.parameters():
        p.requires_grad_(False)
    head = snn.graph_module.head  # training a read-out after the last neurons needs no gradient through them
    head.weight.requires_grad_(True)
    snn(x).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_surrogate_backends_give_every_parameter_a_gradient(backend, data):
    snn, x = _trainable(backend, data)
    snn(x).sum().backward()
    params = list(snn.parameters())
    assert all(p.grad is not None for p in params)
    assert sum(float(p.grad.abs().sum()) > 0 for p in params) == len(params)
