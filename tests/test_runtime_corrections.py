"""Generic runtime support for per-sample corrections (pre-simulation, masks) and delayed decoding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from snnbridge import Adjustment, DecodeWindow, SiteCorrection


class ShiftV0(SiteCorrection):
    """Start the counted run from v0 + delta (records what it saw)."""

    def __init__(self, steps, scope, delta):
        self.presim_steps, self.scope, self.delta, self.seen = steps, scope, delta, []

    def adjust(self, site, record, v0):
        self.seen.append(record)
        return Adjustment(v0=v0 + self.delta)


class Silence(SiteCorrection):
    """Mask every neuron whose membrane after the pre-simulation is <= 0."""

    presim_steps, scope = 3, "network"

    def adjust(self, site, record, v0):
        return Adjustment(mask=(record.v_seq[-1] > 0).to(v0.dtype))


def _snn(T=8):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    data = [torch.rand(32, 5)]
    return snnbridge.convert(net, ["maxnorm"], calibration=data, timesteps=T, progress=False), data[0][:7]


def _spikes(snn, x, T=None):
    with snn.record() as rec:
        out = snn(x, timesteps=T)
    return out, {name: rec[name].spikes for name in snn.sites}


def test_layer_lookahead_restarts_the_counted_run_from_the_corrected_state():
    snn, x = _snn()
    site = snn.sites["1"]
    th = site.spec.threshold
    corr = ShiftV0(2, "layer", 0.5 * th)
    site.corrections.append(corr)
    assert snn.warmup == 0 and snn.lookahead == 2 and snn.steps_run == 2 + 8
    out, spikes = _spikes(snn, x)
    # the look-ahead saw the first 2 counted inputs, from the spec's v0
    assert corr.seen[-1].drive.shape[0] == 2 and torch.all(corr.seen[-1].v0 == 0)
    # ... and the counted run equals a run whose spec starts at v0 + delta
    site.corrections.clear()
    snn.set_spec("1", site.spec.replace(v0=0.5 * th))
    ref_out, ref_spikes = _spikes(snn, x)
    assert torch.equal(spikes["1"][-8:], ref_spikes["1"]) and torch.equal(out, ref_out)


@pytest.mark.parametrize("on_means", [True, False])
def test_a_run_shorter_than_the_lookahead_is_the_prefix_of_a_padded_run(on_means):
    snn, x = _snn(T=2)
    snn.forward_on_means = on_means
    snn.sites["1"].corrections.append(ShiftV0(4, "layer", 0.3))
    assert (snn.padded_steps(2), snn.steps_for(2), snn.padded_steps(6), snn.steps_for(6)) == (4, 8, 6, 10)
    long = snn.sweep(x, 8)
    for T in (1, 2, 3):
        torch.testing.assert_close(snn(x, timesteps=T), long[T - 1])
        torch.testing.assert_close(snn.sweep(x, T), long[:T])
        assert snn.run(x, timesteps=T).shape[0] == T
    # recordings hold the returned steps only; the padding merely fed the look-ahead
    with snn.record(keep=("spikes", "rate")) as short:
        snn(x)
    with snn.record(keep=("spikes",)) as full:
        snn(x, timesteps=8)
    assert short["1"].spikes.shape[0] == 2
    torch.testing.assert_close(short["1"].spikes, full["1"].spikes[:2])
    th = snn.specs["1"].threshold
    torch.testing.assert_close(short["1"].rate, th * full["1"].spikes[:2].mean(0))
    # a [T, B, ...] sequence cannot be padded
    with pytest.raises(snnbridge.InputError, match="at least 4 steps"):
        snn(x.expand(2, *x.shape), time_major=True)


def test_network_warmup_is_shared_uncounted_and_chunk_independent():
    snn, x = _snn(T=8)
    plain_steps = snn.run(x)
    for site in snn.sites.values():
        site.corrections.append(Silence())
    shift = ShiftV0(3, "layer", 0.0)  # a layer-scoped correction joins the shared warm-up
    snn.sites["3"].corrections.insert(0, shift)
    assert snn.warmup == 3 and snn.lookahead == 0 and snn.steps_run == 3 + 8
    per_step = snn.run(x)
    assert per_step.shape[0] == 11
    torch.testing.assert_close(per_step[:3], plain_steps[:3])  # the warm-up is an ordinary run
    assert shift.seen[-1].spikes.shape[0] == 3
    for chunk in (1, 2, 5):
        snn.time_chunk = chunk
        torch.testing.assert_close(snn.run(x), per_step, rtol=0, atol=0)
    snn.time_chunk = None
    # forward and sweep count only the 8 steps after the warm-up
    torch.testing.assert_close(snn(x), per_step[3:].mean(0))
    torch.testing.assert_close(snn.sweep(x)[-1], snn(x))
    masks = [s.mask for s in snn.sites.values()]
    assert all(m is not None for m in masks) and any((m == 0).any() for m in masks)


def test_decode_window_g17():
    snn, x = _snn(T=64)
    snn.decode_window = DecodeWindow(delay=20, keep=4)  # G17: t0 = min(t0_est, T - 4), t0_est = 20
    per_step = snn.run(x)
    torch.testing.assert_close(snn(x, timesteps=16), per_step[12:16].mean(0))  # steps 13..16
    torch.testing.assert_close(snn(x), per_step[20:64].mean(0))  # steps 21..64
    sweep = snn.sweep(x)
    for t in (1, 3, 4, 5, 16, 24, 64):
        torch.testing.assert_close(sweep[t - 1], snn(x, timesteps=t))
