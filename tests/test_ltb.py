"""Local threshold balancing (plugin ``ltb``): golden facts G8 and G17, clipping downstream, max pooling, delay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers import data_driven as dd

BACKENDS = snnbridge.get_registry().names("backend")


def _relu_head(features: int = 1) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Linear(features, 1)).eval()


def _ltb(model, data, T=4, **options):
    options.setdefault("delayed_evaluation", False)
    return snnbridge.convert(model, [{"ltb": options}], calibration=data, timesteps=T, progress=False)


@pytest.mark.parametrize("values,expected", [
    ((0.0, 1.0, 2.0, 3.0), (3.0, 3.0, 3.0, 3.0)),
    ((0.0, 1.0, 2.0, 5.0), (4.0, 4.5, 4.75, 4.875, 4.9375, 4.96875)),
])
def test_g8_threshold_balancing_sequence(values, expected):
    batch = torch.tensor(values).view(-1, 1)
    for k, want in enumerate(expected, start=1):  # the same batch k times
        snn = _ltb(_relu_head(), [batch], iterations=k)
        torch.testing.assert_close(snn.specs["0"].threshold, torch.tensor([want]))
    # iterations beyond the number of batches cycle through them
    snn = _ltb(_relu_head(), [batch, batch], iterations=len(expected))
    torch.testing.assert_close(snn.specs["0"].threshold, torch.tensor([expected[-1]]))


def test_per_feature_and_layerwise_thresholds():
    batch = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0], [5.0, 10.0]])
    snn = _ltb(_relu_head(2), [batch], iterations=2)
    torch.testing.assert_close(snn.specs["0"].threshold, torch.tensor([4.5, 9.0]))
    flat = _ltb(_relu_head(2), [batch], iterations=1, channelwise=False)
    assert flat.specs["0"].threshold == pytest.approx(2 * batch.mean())


def test_downstream_sites_see_clipped_activations_during_balancing():
    net = nn.Sequential(nn.ReLU(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).eval()
    with torch.no_grad():
        net[1].weight.fill_(1.0)
        net[1].bias.zero_()
    batch = torch.tensor([[0.0], [1.0], [2.0], [5.0]])
    snn = _ltb(net, [batch], iterations=1)
    assert float(snn.specs["0"].threshold) == 4.0
    # site 2 sees min(x, 4) = (0, 1, 2, 4): theta = 2 * 7/4 = 3.5 (the unclipped 5 would give 4.0)
    assert float(snn.specs["2"].threshold) == pytest.approx(3.5)


def test_v0_is_half_threshold_and_dead_channels_are_silenced():
    batch = torch.tensor([[1.0, -1.0], [3.0, -2.0]])  # feature 1 never activates
    snn = _ltb(_relu_head(2), [batch], iterations=1)
    spec = snn.specs["0"]
    torch.testing.assert_close(spec.v0, 0.5 * spec.threshold)
    assert float(spec.threshold[1]) == pytest.approx(1e-6)
    assert any("never activated" in n for n in snn.report["notes"])
    # iterations: auto says it for the candidate it keeps (and only once)
    auto = snnbridge.convert(_relu_head(2), [{"ltb": {"candidates": [1, 2], "delayed_evaluation": False}}],
                             calibration=[batch, batch], timesteps=4, progress=False)
    assert float(auto.specs["0"].threshold[1]) == pytest.approx(1e-6)
    assert sum("never activated" in n for n in auto.report["notes"]) == 1
    assert snnbridge.build_recipe(["ltb"]).entries[0].info.provides == ("threshold", "v0_base")


def test_pre_neuron_max_pooling_balances_pooled_currents():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).eval()
    x = torch.randn(8, 2, 4, 4)
    snn = _ltb(net, [x], iterations=1)
    assert snn.report["graph"]["pre_neuron_maxpool"], snn.report["graph"]
    (site,) = [s for s in snn.sites.values()]
    assert site.info.pre_pool is not None
    pooled = F.max_pool2d(torch.relu(conv(x)), 2).detach()  # what the neuron integrates: max over currents
    torch.testing.assert_close(site.spec.threshold, 2 * pooled.mean(dim=(0, 2, 3)))


# -- G17: delayed evaluation ------------------------------------------------------------------------------------


def test_g17_decoding_window():
    x = torch.rand(32, 1)
    snn = snnbridge.convert(_relu_head(), [{"ltb": {"delay": 20}}], calibration=[x], timesteps=64, progress=False)
    per_step = snn.run(x[:5])
    torch.testing.assert_close(snn(x[:5], timesteps=16), per_step[12:16].mean(0))  # steps 13..16
    torch.testing.assert_close(snn(x[:5]), per_step[20:64].mean(0))  # steps 21..64
    sweep = snn.sweep(x[:5])
    for t in (1, 4, 5, 16, 24, 64):
        torch.testing.assert_close(sweep[t - 1], snn(x[:5], timesteps=t))
    window = snn.decode_window
    assert window.start(16) == 12 and window.start(64) == 20 and window.start(3) == 0


def test_delay_estimate_follows_the_paper_formula():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    data = [torch.randn(16, 3) for _ in range(3)]
    snn = snnbridge.convert(net, [{"ltb": {"iterations": 3, "v0": 0.25}}], calibration=data, timesteps=32,
                            progress=False)
    th1, th2 = snn.specs["1"].threshold, snn.specs["3"].threshold
    with torch.no_grad():  # the clipped forward pass on the first batch; mean map of relu(z); its largest element
        z1 = net[0](data[0])
        z2 = net[2](torch.minimum(torch.relu(z1), th1))
    expected = 0.0
    for z, th in ((z1, th1), (z2, th2)):
        m = torch.relu(z).mean(0)
        i = int(m.argmax())
        expected += float(th[i] - 0.25 * th[i]) / float(m[i])
    assert snn.report["ltb_t0_est"] == math.floor(expected)
    assert snn.decode_window.start(100) == math.floor(expected)


def test_delay_survives_save_and_load(tmp_path):
    x = torch.rand(16, 1)
    snn = snnbridge.convert(_relu_head(), [{"ltb": {"delay": 3}}], calibration=[x], timesteps=8, progress=False)
    snnbridge.save(snn, tmp_path / "ltb.pt")
    back = snnbridge.load(tmp_path / "ltb.pt", model=_relu_head)
    assert back.decode_window.start(8) == 3
    torch.testing.assert_close(back(x), snn(x))


# -- on a trained BN network --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    return dd.trained_net(), dd.calibration_batches()


def test_ltb_beats_max_norm_at_T8_on_every_backend(trained):
    net, data = trained
    base = snnbridge.convert(net, ["maxnorm"], calibration=data, timesteps=8, progress=False)
    outs = {}
    for backend in BACKENDS:
        snn = snnbridge.convert(net, [{"ltb": {"iterations": 16}}], calibration=data, timesteps=8, progress=False,
                                backend=backend)
        outs[backend] = snn.sweep(dd.test_set()[0][:128])
        if backend == "torch":
            e0, e1 = dd.layer_errors(base, 8), dd.layer_errors(snn, 8)
            assert dd.total(e1, "mse") < 0.5 * dd.total(e0, "mse")
            assert dd.accuracy(snn) >= dd.accuracy(base)
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["torch"], rtol=0, atol=1e-5, msg=backend)


def test_delayed_evaluation_lowers_the_output_error(trained):
    """What the delay targets: the early, not yet propagated steps in the decoded output (here at T = 16, 32)."""
    net, data = trained
    x = dd.test_set()[0]
    ann = net(x).detach()
    runs = {d: snnbridge.convert(net, [{"ltb": {"iterations": 16, "delayed_evaluation": d}}], calibration=data,
                                 timesteps=32, progress=False).sweep(x) for d in (True, False)}
    for T in (16, 32):
        err = {d: float(((s[T - 1] - ann) ** 2).mean()) for d, s in runs.items()}
        assert err[True] < err[False], (T, err)


# -- iterations: auto ---------------------------------------------------------------------------------------------


def test_auto_balances_without_the_held_out_batch_and_keeps_the_best_agreeing_candidate():
    net, calib = dd.trained_net(), dd.calibration_batches(4, 64)
    T, candidates = 8, [2, 8, 32]
    snn = snnbridge.convert(net, [{"ltb": {"candidates": candidates}}], calibration=calib, timesteps=T,
                            progress=False)
    chosen, scores = snn.report["ltb_iterations"], snn.report["ltb_candidates"]
    assert chosen in candidates and sorted(int(k) for k in scores) == candidates
    best = max(candidates, key=lambda k: (scores[str(k)]["agreement"], -scores[str(k)]["mse"], -k))
    assert chosen == best
    # the chosen thresholds are exactly those of `iterations: chosen` on the batches after the held-out first one
    fixed = snnbridge.convert(net, [{"ltb": {"iterations": chosen}}], calibration=calib[1:], timesteps=T,
                              progress=False)
    for name in snn.sites:
        torch.testing.assert_close(snn.specs[name].threshold, fixed.specs[name].threshold)
        torch.testing.assert_close(snn.specs[name].v0, fixed.specs[name].v0)
    assert snn.decode_window == fixed.decode_window
    # its agreement on the held-out batch is the one reported
    with torch.no_grad():
        agree = float((snn(calib[0], timesteps=T).argmax(-1) == net(calib[0]).argmax(-1)).float().mean())
    assert agree == pytest.approx(scores[str(chosen)]["agreement"], abs=1e-4)
    assert any("iterations auto chose" in n for n in snn.report["notes"])


def test_auto_scores_differ_between_candidates_and_fewer_iterations_mean_lower_thresholds():
    net, calib = dd.trained_net(), dd.calibration_batches(3, 64)
    snn = snnbridge.convert(net, [{"ltb": {"candidates": [1, 64]}}], calibration=calib, timesteps=4, progress=False)
    low = snnbridge.convert(net, [{"ltb": {"iterations": 1}}], calibration=calib[1:], timesteps=4, progress=False)
    high = snnbridge.convert(net, [{"ltb": {"iterations": 64}}], calibration=calib[1:], timesteps=4, progress=False)
    for name in low.sites:
        assert bool((low.specs[name].threshold <= high.specs[name].threshold + 1e-6).all())
    assert snn.report["ltb_candidates"]["1"] != snn.report["ltb_candidates"]["64"]


def test_auto_with_one_batch_holds_out_its_last_quarter():
    net = dd.trained_net()
    x = dd.calibration_batches(1, 64)[0]
    snn = snnbridge.convert(net, [{"ltb": {"candidates": [4]}}], calibration=[x], timesteps=4, progress=False)
    fixed = snnbridge.convert(net, [{"ltb": {"iterations": 4}}], calibration=[x[:48]], timesteps=4, progress=False)
    for name in snn.sites:
        torch.testing.assert_close(snn.specs[name].threshold, fixed.specs[name].threshold)
    assert any("last 16 image(s) are held out" in n for n in snn.report["notes"])
    with pytest.raises(snnbridge.InputError, match="single image"):
        snnbridge.convert(net, ["ltb"], calibration=[x[:1]], timesteps=4, progress=False)


@pytest.mark.parametrize("options,match", [
    ({"iterations": "best"}, "must be a int or 'auto' or null"),
    ({"iterations": "Auto"}, "Did you mean 'auto'"),
    ({"iterations": 0}, "iterations >= 1"),
    ({"candidates": []}, "non-empty list"),
    ({"candidates": [4, 0]}, "non-empty list"),
    ({"holdout_batches": 0}, "holdout_batches >= 1"),
])
def test_auto_options_are_checked(options, match):
    with pytest.raises(snnbridge.OptionError, match=match):
        snnbridge.build_recipe([{"ltb": options}])
