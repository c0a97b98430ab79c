"""Golden fact G5 (the IF closed form N = clip(floor(x T / theta + phi), 0, T), hand-worked) on every backend,
through ``snnbridge.simulate``.

snnbridge has one firing rule, ``m >= threshold``, on every backend; the tie cases below
would give another count under ``m > threshold`` (snnTorch's own rule - checked at the end
with a plain ``snntorch.Leaky`` to show the tie is real). Expectations are in float64 and
all chosen inputs are exact or far from rounding trouble.
"""

from __future__ import annotations

import pytest
import torch

from snnbridge import NeuronSpec, simulate

BACKENDS = ["torch", "spikingjelly", "snntorch"]
F64 = torch.float64


def const(values, T):
    """``[T, len(values)]`` float64: one constant input per column."""
    return torch.tensor(values, dtype=F64).expand(T, -1).contiguous()


def counts(spec, x, backend):
    return simulate(spec, x, backend=backend).spikes.sum(0).tolist()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_closed_form_theta1_half_threshold(backend):
    # N = clip(floor(xT/theta + 1/2), 0, T)
    x = const([-0.2, 0.0, 0.0625, 0.3, 0.5, 0.99, 1.0, 1.7], 8)
    assert counts(NeuronSpec(threshold=1.0, v0=0.5), x, backend) == [0, 0, 1, 2, 4, 8, 8, 8]


def test_closed_form_theta2_with_exact_ties(backend):
    # 0.25 (m(4) = 2.0), 0.75 (m(4) = 2.0 after one reset) and 1.0 (m(1) = 2.0) sit exactly on the threshold
    x = const([0.24, 0.25, 0.26, 0.75, 1.0, 1.74, 1.76, 3.0], 4)
    assert counts(NeuronSpec(threshold=2.0, v0=1.0), x, backend) == [0, 1, 1, 2, 2, 3, 4, 4]


def test_tie_fires_with_ge_rule(backend):
    # x = 0.125, theta = 1, T = 4, v0 = 0.5: m(4) = 1.0 exactly -> ">=" gives 1 spike (">" would give 0)
    r = simulate(NeuronSpec(threshold=1.0, v0=0.5), torch.full((4, 1), 0.125, dtype=F64), backend=backend,
                 return_v=True)
    assert r.spikes.flatten().tolist() == [0, 0, 0, 1]
    assert r.v_seq.flatten().tolist() == [0.625, 0.75, 0.875, 0.0]  # the membrane after each step's reset
    assert r.v_last.flatten().tolist() == [0.0]


def test_tie_in_float32_too(backend):
    r = simulate(NeuronSpec(threshold=1.0, v0=0.5), torch.full((4, 3), 0.125), backend=backend)
    assert r.spikes.sum(0).tolist() == [1, 1, 1]


def test_zero_initial_potential_floors(backend):
    assert counts(NeuronSpec(threshold=1.0), const([0.3, 0.5, 0.99], 8), backend) == [2, 4, 7]


def test_per_step_shift_differs_from_initial_potential(backend):
    # same total, different timing (a per-step shift is not an initial potential)
    x = torch.full((8, 1), 0.3, dtype=F64)
    shift = simulate(NeuronSpec(threshold=1.0, step_bias=1 / 16), x, backend=backend)
    half = simulate(NeuronSpec(threshold=1.0, v0=0.5), x, backend=backend)
    assert shift.spikes.flatten().cumsum(0).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert half.spikes.flatten().cumsum(0).tolist() == [0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("per_channel", [False, True])
def test_conversion_identity(backend, per_channel):
    # theta * N / T = mean(x) - (v(T) - v(0)) / T, for any input sequence
    g = torch.Generator().manual_seed(3)
    T = 37
    x = torch.randn(T, 4, 3, 5, generator=g, dtype=F64) * 0.8 + 0.2
    theta = torch.tensor([0.5, 1.0, 1.7]) if per_channel else 0.8
    v0 = torch.rand(3, 5, generator=g, dtype=F64) * 0.6
    spec = NeuronSpec(threshold=theta, v0=v0)
    r = simulate(spec, x, backend=backend)
    th = spec.threshold_tensor(x[0], 1)
    lhs = th * r.spikes.sum(0) / T
    rhs = x.mean(0) - (r.v_last - spec.v0_tensor(x[0])) / T
    assert r.spikes.sum() > 0
    torch.testing.assert_close(lhs, rhs.to(lhs.dtype), rtol=0, atol=1e-12)


def test_per_channel_threshold_equals_scalar_per_channel(backend):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(16, 2, 3, 4, 4, generator=g) * 1.5
    th = torch.tensor([0.5, 1.0, 1.5])
    per_channel = simulate(NeuronSpec(threshold=th, v0=0.25), x, backend=backend, return_v=True)
    for c in range(3):
        scalar = simulate(NeuronSpec(threshold=float(th[c]), v0=0.25), x[:, :, c], backend=backend, return_v=True)
        assert torch.equal(per_channel.spikes[:, :, c], scalar.spikes)
        assert torch.equal(per_channel.v_seq[:, :, c], scalar.v_seq)
    uniform = simulate(NeuronSpec(threshold=torch.full((3,), 0.75)), x, backend=backend)
    assert torch.equal(uniform.spikes, simulate(NeuronSpec(threshold=0.75), x, backend=backend).spikes)


def test_per_channel_closed_form(backend):
    # theta_c per channel, v0 = theta_c / 2 per channel ([C]): N_c = clip(floor(x T / theta_c + 1/2), 0, T)
    th = torch.tensor([0.5, 1.0, 2.0])
    T = 8
    x = torch.full((T, 1, 3), 0.3, dtype=F64)
    r = simulate(NeuronSpec(threshold=th, v0=th / 2), x, backend=backend)
    assert r.spikes.sum(0).flatten().tolist() == [5, 2, 1]


def test_v0_forms_agree(backend):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 2, 3, 2, 2, generator=g) * 0.5 + 0.2
    th = torch.tensor([0.6, 1.0, 1.4])
    scalar = simulate(NeuronSpec(threshold=th, v0=0.5), x, backend=backend)
    channel = simulate(NeuronSpec(threshold=th, v0=torch.full((3,), 0.5)), x, backend=backend)
    full = simulate(NeuronSpec(threshold=th, v0=torch.full((3, 2, 2), 0.5)), x, backend=backend)
    assert torch.equal(scalar.spikes, channel.spikes) and torch.equal(scalar.spikes, full.spikes)
    per_c = torch.tensor([0.1, 0.9, 3.0])  # the last one starts above its threshold (even above 2 theta)
    channel = simulate(NeuronSpec(threshold=th, v0=per_c), x, backend=backend, return_v=True)
    full = simulate(NeuronSpec(threshold=th, v0=per_c.view(3, 1, 1).expand(3, 2, 2)), x, backend=backend,
                    return_v=True)
    ref = simulate(NeuronSpec(threshold=th, v0=per_c), x, backend="torch", return_v=True)
    assert torch.equal(channel.spikes, full.spikes) and torch.equal(channel.spikes, ref.spikes)
    assert channel.spikes[0, :, 2].eq(1).all()  # v0 >= threshold fires at step 1 on every backend
    torch.testing.assert_close(channel.v_seq, ref.v_seq, rtol=0, atol=1e-6)


def test_explicit_v_init_overrides_spec(backend):
    x = torch.full((4, 2, 1), 0.25, dtype=F64)
    v_init = torch.tensor([[0.9], [0.0]], dtype=F64)
    r = simulate(NeuronSpec(threshold=1.0, v0=0.5), x, backend=backend, v_init=v_init, return_v=True)
    assert r.spikes[:, :, 0].T.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]


def test_plain_snntorch_leaky_uses_strict_rule():
    """Why the adapter passes its own spike function: snnTorch's default fires on mem > threshold."""
    import snntorch

    lif = snntorch.Leaky(beta=1.0, threshold=1.0, reset_mechanism="subtract")
    mem = torch.zeros(1)
    total = 0
    for t in range(4):
        spk, mem = lif(torch.tensor([0.125 + (0.5 if t == 0 else 0.0)]), mem)
        total += int(spk.sum())
    assert total == 0  # the ">" count of the tie case; snnbridge's snntorch backend gives 1
