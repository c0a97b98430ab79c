"""The public plugin API: observers (hand-worked values), ctx.collect caching, snn.record, DecodeWindow,
TimestepCheck."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import snnbridge
from helpers import zoo
from snnbridge import (
    EMAMaxObserver,
    MaxObserver,
    MeanObserver,
    PercentileObserver,
    ReservoirObserver,
    TimestepCheck,
    TimestepMismatchWarning,
    hookimpl,
)


def _feed(observer, *batches):
    for b in batches:
        observer.observe(b)
    return observer.compute()


def test_max_and_mean_layer_and_channel_wise():
    a = torch.tensor([[[1.0, 5.0]], [[3.0, -2.0]]]).view(2, 2, 1)  # [B=2, C=2, 1]: channel 0 = (1, 3), 1 = (5, -2)
    b = torch.tensor([[[2.0], [7.0]]])  # [1, 2, 1]
    assert _feed(MaxObserver(), a, b).item() == 7.0
    assert _feed(MaxObserver(channel_axis=1), a, b).tolist() == [3.0, 7.0]
    assert _feed(MeanObserver(), a, b).item() == pytest.approx((1 + 3 + 5 - 2 + 2 + 7) / 6)
    assert _feed(MeanObserver(channel_axis=1), a, b).tolist() == pytest.approx([2.0, 10 / 3])
    per_pos = _feed(MeanObserver(per_position=True), a, b)  # mean over the 3 samples, activation shape kept
    assert per_pos.shape == (2, 1) and per_pos.view(-1).tolist() == pytest.approx([2.0, 10 / 3])


def test_ema_weights_the_newest_batch_by_momentum():
    batches = [torch.full((4, 1), v) for v in (10.0, 0.0, 20.0)]
    # first batch initialises; then ema <- 0.75 ema + 0.25 s
    assert _feed(EMAMaxObserver(0.25), *batches).item() == pytest.approx(0.75 * (0.75 * 10 + 0.25 * 0) + 0.25 * 20)
    with pytest.raises(ValueError, match="0 < momentum <= 1"):
        EMAMaxObserver(0.0)


def test_percentile_g14_and_linear_interpolation_like_numpy():
    values = torch.arange(0, 1001, dtype=torch.float32)  # G14: 99.9th -> 999.0, 99th -> 990.0
    assert _feed(PercentileObserver(99.9), values.view(-1, 1)).item() == pytest.approx(999.0)
    assert _feed(PercentileObserver(99.0), values.view(-1, 1)).item() == pytest.approx(990.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g)
    got = _feed(PercentileObserver(37.5, channel_axis=1), x)
    want = np.percentile(x.numpy(), 37.5, axis=0, method="linear")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    nz = _feed(PercentileObserver(50.0, nonzero=True), torch.tensor([[0.0], [0.0], [1.0], [3.0]]))
    assert nz.item() == pytest.approx(2.0)  # over the positive values only


def test_reservoir_is_exact_below_the_cap_and_uniform_above():
    x = torch.arange(20.0).view(4, 5)
    assert sorted(_feed(ReservoirObserver(max_samples=100), x).tolist()) == list(range(20))
    obs = ReservoirObserver(max_samples=1000)
    obs.generator = torch.Generator().manual_seed(3)
    sample = _feed(obs, *[torch.arange(i * 10000, (i + 1) * 10000, dtype=torch.float32).view(-1, 1)
                          for i in range(5)])
    assert sample.numel() == 1000 and len(set(sample.tolist())) == 1000
    counts = torch.histc(sample, bins=5, min=0, max=50000)  # each batch holds a fifth of the values
    assert counts.min() > 150 and counts.max() < 250, counts


def test_collect_shares_one_pass_per_statistic():
    net = zoo.mlp(3, 4, 2)
    calls = []
    data = [torch.rand(8, 3) for _ in range(3)]
    seen = []

    class Probe:
        name = "probe"

        @hookimpl
        def snnbridge_plugin_info(self):
            return snnbridge.PluginInfo(summary="collects twice", provides=("threshold",), needs_data=True)

        @hookimpl
        def snnbridge_estimate_threshold(self, ctx):
            handle = ctx.ann.get_submodule("0").register_forward_hook(lambda m, i, o: calls.append(1))
            try:
                a = ctx.collect(MaxObserver())
                b = ctx.collect(MaxObserver())               # same key: cached, no new pass
                c = ctx.collect(MaxObserver(channel_axis=1))  # another statistic: one more pass
            finally:
                handle.remove()
            seen.append((a is b, c))
            return {name: float(v) for name, v in a.items()}

    snnbridge.convert(net, [Probe()], calibration=data, timesteps=4, progress=False)
    (same, per_channel), = seen
    assert same and len(calls) == 2 * len(data)  # two passes over the calibration data for three requests
    assert set(per_channel) == {"1"} and per_channel["1"].shape == (4,)


def test_record_keeps_what_was_asked_and_detaches(small_resnet, calib_batches, test_input):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=6, progress=False)
    name = next(iter(snn.sites))
    with snn.record(name, keep=("spikes", "output", "rate", "drive_mean")) as rec:
        snn(test_input)
        snn(test_input[:2])
    trace = rec[name]
    th = snn.specs[name].threshold
    assert trace.spikes.shape[:2] == (6, 8) and trace.drive is None and trace.v is None
    torch.testing.assert_close(trace.output, trace.spikes * th)
    torch.testing.assert_close(trace.rate, trace.output.mean(0))
    torch.testing.assert_close(rec.sample_mean(name, "rate"), trace.rate.mean(0))
    assert len(rec.runs) == 2 and rec.runs[1][name].spikes.shape[1] == 2
    assert snn._state.recordings == []  # detached: the model saves and copies without it
    copy.deepcopy(snn)
    pickle.dumps(snn)
    with pytest.raises(snnbridge.InputError, match="Did you mean 'spikes'"):
        snn.record(keep=("spikse",))
    with pytest.raises(snnbridge.InputError, match="no site 'nope'"):
        snn.record("nope")
    with pytest.raises(snnbridge.InputError, match="record it with keep=\\('drive',\\)"):
        trace.counted("drive")


def test_record_counts_a_warm_up_apart(small_resnet, calib_batches, test_input):
    from helpers.plugins import WarmupShift

    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=4, progress=False)
    for site in snn.sites.values():
        site.corrections.append(WarmupShift())
    name = next(iter(snn.sites))
    with snn.record(name, keep=("spikes", "rate", "v")) as rec:
        snn(test_input)
    trace = rec[name]
    assert trace.warmup == 2 and trace.spikes.shape[0] == 6 and trace.counted("spikes").shape[0] == 4
    torch.testing.assert_close(trace.rate, (trace.counted("spikes") * snn.specs[name].threshold).mean(0))


def test_decode_window():
    w = snnbridge.DecodeWindow(delay=20, keep=4)  # G17: t0 = min(t0_est, T - 4)
    assert [w.start(T) for T in (3, 4, 16, 24, 64)] == [0, 0, 12, 20, 20]
    assert snnbridge.DecodeWindow().start(10) == 0
    with pytest.raises(snnbridge.InputError, match="keep >= 1"):
        snnbridge.DecodeWindow(delay=1, keep=0)


def test_timestep_check_policies():
    with pytest.warns(TimestepMismatchWarning, match="calibrated for T = 8 steps but the SNN is run for T = 4"):
        TimestepCheck("x", 8)(None, 4)
    with pytest.raises(snnbridge.InputError, match="calibrated for T = 8"):
        TimestepCheck("x", 8, "error")(None, 4)
    TimestepCheck("x", 8, "ignore")(None, 4)
    TimestepCheck("x", 8, "error")(None, 8)
    with pytest.raises(snnbridge.InputError, match="warn, error, ignore"):
        TimestepCheck("x", 8, "loud")


def test_t_specific_plugins_get_the_shared_options_and_the_core_attaches_the_check(small_resnet, calib_batches):
    reg = snnbridge.get_registry()
    for name in ("snn_calibration", "ftbc"):
        assert reg.info(name).t_specific
        assert [o.name for o in reg.options(name)][-2:] == ["timesteps", "on_mismatch"]
    snn = snnbridge.convert(small_resnet, [{"calibration": {"timesteps": 8, "on_mismatch": "error"}}],
                            calibration=calib_batches, timesteps=4, progress=False)
    assert [repr(c) for c in snn.timestep_checks] == ["TimestepCheck('snn_calibration', T=8, error)"]
    with pytest.raises(snnbridge.InputError, match="snn_calibration: the corrections were calibrated for T = 8"):
        snn(torch.rand(2, 3, 8, 8))
