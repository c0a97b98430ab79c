"""snnbridge.energy: SynOps counted exactly from the spikes of a run, MACs of what runs, energy arithmetic.

Hand-worked facts: IF neurons with threshold 1 and v0 = 0 driven by a constant c fire floor(c * t)
times in t steps (c = 1, 0.5, 0.25, 0 -> 4, 2, 1, 0 spikes in 4 steps, at steps 1-4, 2 and 4, 4, never);
a spike drives one accumulate per synapse: out_features for a Linear, out_channels x the kernel
positions covering it for a convolution (4 at a corner of a 3x3 / padding 1 kernel, 9 inside).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers import zoo
from helpers.plugins import WarmupShift, fixed_threshold
from snnbridge import InputError, OptionError, UnsupportedModelError
from snnbridge.energy import COST_PRESETS, HOROWITZ_45NM

UNIT = {"mac": 2.0, "ac": 1.0, "neuron": 0.5}  # exact in binary: the arithmetic is checked to the last digit
RAMP = torch.tensor([[1.0, 0.5, 0.25, 0.0]])  # 4, 2, 1, 0 spikes in 4 steps at threshold 1


def _layer(result, name):
    return next(e for e in result["layers"] if e["name"] == name)


def _kind(result, kind):
    return [e for e in result["layers"] if e["kind"] == kind]


def _two_site_mlp():
    """ReLU -> Linear(4, 3, identity rows, no bias) -> ReLU -> Linear(3, 2): site 2 repeats site 0's first spikes.

    The weight 0.7 from input 3 (which never spikes) changes nothing but keeps the weights from being 0/1, which
    SpikingJelly's counter would take for spikes too.
    """
    fc1, fc2 = nn.Linear(4, 3, bias=False), nn.Linear(3, 2)
    with torch.no_grad():
        fc1.weight.copy_(torch.eye(3, 4))
        fc1.weight[0, 3] = 0.7
        fc2.weight.fill_(0.5)
        fc2.bias.fill_(0.1)
    return nn.Sequential(nn.ReLU(), fc1, nn.ReLU(), fc2).eval()


def _convert(model, x, threshold=1.0, T=4, backend="torch"):
    return snnbridge.convert(model, [fixed_threshold("fixed", threshold)], example_input=x, timesteps=T,
                             backend=backend, progress=False)


def test_linear_synops_neurons_and_energy_are_hand_computable():
    snn = _convert(_two_site_mlp(), RAMP)
    r = snnbridge.energy(snn, RAMP, costs=UNIT, per_step=True)
    fc1, fc2 = _layer(r, "1"), _layer(r, "3")
    # site 0 spikes per step: [1, 2, 1, 3] (neuron 0 every step, neuron 1 at 2 and 4, neuron 2 at 4)
    assert fc1["input"] == "spikes" and fc1["runs"] == "every step"
    assert fc1["per_step"]["synops"] == [3.0, 6.0, 3.0, 9.0] and fc1["synops"] == 21.0
    assert fc1["macs"] == 0 and fc1["adds"] == 0 and fc1["ann_macs"] == 12  # no bias
    # the head runs once on the mean of its inputs (forward_on_means): 3 x 2 MACs and 2 bias adds
    assert fc2["input"] == "analog" and fc2["runs"] == "once"
    assert (fc2["macs"], fc2["adds"], fc2["synops"], fc2["ann_macs"], fc2["ann_adds"]) == (6, 2, 0, 6, 2)
    s0, s2 = _kind(r, "neurons")
    assert (s0["spikes"], s0["neuron_updates"], s0["neurons"]) == (7, 16, 4)
    assert (s2["spikes"], s2["neuron_updates"]) == (7, 12)  # site 2 fires as site 0's neurons 0-2
    assert s0["firing_rate"] == 7 / 16
    t = r["total"]
    assert (t["synops"], t["macs"], t["adds"], t["neuron_updates"], t["spikes"]) == (21, 6, 2, 28, 14)
    assert t["energy_pj"] == 1.0 * (21 + 2) + 2.0 * 6 + 0.5 * 28
    assert t["ann_macs"] == 18 and t["ann_energy_pj"] == 2.0 * 18 + 1.0 * 2
    assert t["ratio"] == t["energy_pj"] / t["ann_energy_pj"] and t["synops_per_ann_mac"] == 21 / 18
    assert r["costs"] == {"preset": "custom", **UNIT} and r["timesteps"] == 4 and r["batch"] == 1

    # a per-step head (as a chip runs it) is fed by site 2's spikes: 2 synapses per spike, bias every step
    snn.forward_on_means = False
    r = snnbridge.energy(snn, RAMP, costs=UNIT, per_step=True)
    fc2 = _layer(r, "3")
    assert fc2["input"] == "spikes" and fc2["per_step"]["synops"] == [2.0, 4.0, 2.0, 6.0]
    assert (fc2["macs"], fc2["adds"]) == (0, 8)


def test_counts_are_per_sample():
    snn = _convert(_two_site_mlp(), RAMP)
    one = snnbridge.energy(snn, RAMP)["total"]
    both = snnbridge.energy(snn, torch.cat([RAMP, torch.zeros(1, 4)]))["total"]  # a silent second sample
    assert both["synops"] == one["synops"] / 2 and both["spikes"] == one["spikes"] / 2
    assert both["macs"] == one["macs"] and both["ann_macs"] == one["ann_macs"]


@pytest.mark.parametrize("kw,expected", [
    ({"out_channels": 2, "padding": 1}, (4 + 9) * 2),          # corner: 4 kernel positions, inside: 9
    ({"out_channels": 1, "padding": 1, "stride": 2}, 1 + 4),  # 4x4 -> 2x2: the corner feeds 1 output, (1,1) 4
    ({"out_channels": 3, "padding": 0}, (1 + 4) * 3),          # no padding: the corner is in 1 window, (1,1) in 4
])
def test_conv_border_fanout_is_exact(kw, expected):
    kw = dict(kw)
    out_ch = kw.pop("out_channels")
    torch.manual_seed(0)
    conv = nn.Conv2d(1, out_ch, 3, bias=False, **kw)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = 1.0  # one spike each at T = 1
    side = conv(x).shape[-1]
    model = nn.Sequential(nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.Linear(out_ch * side * side, 2)).eval()
    snn = _convert(model, x, T=1)
    r = snnbridge.energy(snn, x)
    assert _layer(r, "1")["synops"] == expected
    # the brute force: conv2d(spikes, ones_like(weight)) summed
    assert F.conv2d(x, torch.ones_like(conv.weight), stride=conv.stride, padding=conv.padding).sum() == expected


def test_grouped_strided_conv_matches_brute_force_on_recorded_spikes():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    model = nn.Sequential(nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 2)).eval()
    x = torch.rand(3, 4, 5, 5)
    snn = _convert(model, x, threshold=0.3, T=5)
    rec = snnbridge.record(snn, x, what="spikes")
    spikes = rec[list(snn.sites)[0]]["spikes"]  # [T, B, 4, 5, 5]
    brute = F.conv2d(spikes.flatten(0, 1), torch.ones_like(conv.weight), stride=2, padding=1, groups=2).sum()
    r = snnbridge.energy(snn, x)
    assert _layer(r, "1")["synops"] == pytest.approx(float(brute) / 3, rel=1e-12)
    assert brute > 0
    assert _layer(r, "1")["ann_macs"] == 6 * 3 * 3 * (4 // 2) * 9


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_max_pooled_spikes_stay_spikes_average_pooled_ones_do_not(pool):
    class SpikePool(nn.Module):
        """The site has two users, so the max-pool stays after the neurons (it pools weighted spikes)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.fc, self.skip = nn.Linear(3 * 2 * 2, 2), nn.Linear(2 * 4 * 4, 2)

        def forward(self, x):
            s = torch.relu(x)
            p = F.max_pool2d(s, 2) if pool == "max" else F.avg_pool2d(s, 2)
            return self.fc(torch.relu(self.conv(p)).flatten(1)) + self.skip(s.flatten(1))

    torch.manual_seed(0)
    x = torch.rand(3, 2, 4, 4)
    snn = _convert(SpikePool().eval(), x, threshold=0.6, T=4)
    if pool == "max":
        assert len(snn.report["graph"]["spike_maxpool"]) == 1  # the lossy max-pool of weighted spikes
    r = snnbridge.energy(snn, x)
    conv = _layer(r, "conv")
    if pool == "avg":
        assert (conv["input"], conv["synops"], conv["macs"]) == ("analog", 0, 3 * 2 * 2 * 2 * 9 * 4)
        return
    spikes = snnbridge.record(snn, x, what="spikes")[list(snn.sites)[0]]["spikes"].flatten(0, 1).double()
    brute = F.conv2d(F.max_pool2d(spikes, 2), torch.ones(3, 2, 3, 3, dtype=torch.float64), padding=1).sum() / 3
    assert conv["input"] == "spikes" and conv["synops"] == pytest.approx(float(brute), rel=1e-12) and brute > 0


def test_prefix_and_head_macs_once_and_per_step_with_a_sequence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.rand(2, 3, 8, 8)
    snn = _convert(model, x, threshold=0.5, T=6)
    r = snnbridge.energy(snn, x)
    conv, fc = _layer(r, "0"), _layer(r, "3")
    conv_macs, fc_macs = 4 * 8 * 8 * 3 * 9, 5 * 4 * 8 * 8
    assert (conv["input"], conv["runs"], conv["macs"], conv["adds"]) == ("analog", "once", conv_macs, 256)
    assert (fc["runs"], fc["macs"], fc["adds"]) == ("once", fc_macs, 5)
    assert r["total"]["ann_macs"] == conv_macs + fc_macs
    assert r["total"]["neuron_updates"] == 256 * 6
    # one input per step: the first layer runs on every step
    seq = x.unsqueeze(0).expand(6, *x.shape).contiguous()
    r = snnbridge.energy(snn, seq, time_major=True)
    conv, fc = _layer(r, "0"), _layer(r, "3")
    assert (conv["runs"], conv["macs"], conv["adds"]) == ("every step", conv_macs * 6, 256 * 6)
    assert fc["input"] == "spikes" and fc["macs"] == 0 and fc["adds"] == 5 * 6  # the head runs per step on spikes
    assert r["total"]["synops"] == r["total"]["spikes"] * 5


def test_per_channel_thresholds_count_spikes_not_their_weights():
    torch.manual_seed(0)
    model = zoo.mlp(5, 6, 4, 3)
    x = torch.rand(8, 5)
    snn = snnbridge.convert(model, [{"maxnorm": {"channelwise": True}}], calibration=[x], timesteps=8,
                            progress=False)
    first, second = list(snn.sites)
    assert snn.specs[first].per_channel
    rec = snnbridge.record(snn, x, what=("spikes", "output"))
    out = rec[first]["output"]
    assert not bool(((out == 0) | (out == 1)).all())  # weighted spikes, not 0/1: SpikingJelly would count 0
    r = snnbridge.energy(snn, x)
    fc = next(e for e in r["layers"] if e["kind"] == "Linear" and e["input"] == "spikes")
    assert fc["synops"] == pytest.approx(float(rec[first]["spikes"].sum()) * 4 / 8, rel=1e-12)
    assert fc["synops"] > 0
    # doubling every threshold of a site changes its weighted spikes, not the count of what it sent
    spec = snn.specs[first]
    snn.set_spec(first, spec.replace(threshold=spec.threshold * 2))
    rec2 = snnbridge.record(snn, x, what="spikes")
    fc2 = next(e for e in snnbridge.energy(snn, x)["layers"] if e["kind"] == "Linear" and e["input"] == "spikes")
    assert fc2["synops"] == pytest.approx(float(rec2[first]["spikes"].sum()) * 4 / 8, rel=1e-12)


def test_residual_net_adds_avgpool_and_spike_fed_conv(small_resnet, calib_batches, test_input):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=5, progress=False)
    r = snnbridge.energy(snn, test_input)
    rec = snnbridge.record(snn, test_input, what="spikes")
    B, T = test_input.shape[0], 5
    conv2, conv3 = _layer(r, "conv2"), _layer(r, "conv3")
    # conv2 reads average-pooled spikes (graded values): dense MACs on every step
    assert (conv2["input"], conv2["synops"], conv2["macs"]) == ("analog", 0, 8 * 4 * 4 * 8 * 9 * T)
    # conv3 reads the spikes of the site after conv2: exact accumulates
    site = list(snn.sites)[1]  # torch.relu(bn2(conv2(x)))
    s = rec[site]["spikes"].flatten(0, 1).double()
    brute = F.conv2d(s, torch.ones(8, 8, 3, 3, dtype=s.dtype), padding=1).sum() / B
    assert conv3["input"] == "spikes" and conv3["synops"] == pytest.approx(float(brute), rel=1e-12)
    (add,) = _kind(r, "add")
    assert add["adds"] == 8 * 4 * 4 * T and add["ann_adds"] == 8 * 4 * 4
    head = _layer(r, "head")
    assert head["runs"] == "once" and head["macs"] == 5 * 8 * 4 * 4
    layers = r["layers"]
    assert sum(e["energy_pj"] for e in layers) == pytest.approx(r["total"]["energy_pj"], rel=1e-12)
    assert sum(e["synops"] for e in layers) == pytest.approx(r["total"]["synops"], rel=1e-12)
    assert r["total"]["spikes"] == pytest.approx(sum(float(v["spikes"].sum()) for v in rec.values()) / B, rel=1e-12)


def test_energy_arithmetic_with_presets():
    for name, c in COST_PRESETS.items():
        table = HOROWITZ_45NM[name.split("_")[0]]
        assert c["mac"] == pytest.approx(table["mult"] + table["add"]) and c["ac"] == table["add"]
    assert COST_PRESETS["fp32_45nm"]["mac"] == 4.6 and COST_PRESETS["fp32_45nm"]["ac"] == 0.9
    snn = _convert(_two_site_mlp(), RAMP)
    for name, c in COST_PRESETS.items():
        r = snnbridge.energy(snn, RAMP, costs=name)
        for e in r["layers"] + [r["total"]]:
            want = c["ac"] * (e["synops"] + e["adds"]) + c["mac"] * e["macs"] + c["neuron"] * e["neuron_updates"]
            assert e["energy_pj"] == pytest.approx(want, rel=1e-12)
        assert r["total"]["ann_energy_pj"] == pytest.approx(c["mac"] * 18 + c["ac"] * 2)
        assert r["costs"]["preset"] == name


@pytest.fixture(scope="module")
def resnets():
    model = zoo.small_resnet()
    g = torch.Generator().manual_seed(1)
    calib = [torch.rand(16, 3, 8, 8, generator=g) for _ in range(2)]
    return {b: snnbridge.convert(model, [{"robustnorm": {"channelwise": True}}], calibration=calib, backend=b,
                                 timesteps=6, progress=False) for b in ("torch", "spikingjelly", "snntorch")}


def test_every_backend_gives_the_same_counts(resnets, test_input):
    ref = snnbridge.energy(resnets["torch"], test_input)
    assert ref["total"]["synops"] > 0
    for backend in ("spikingjelly", "snntorch"):
        r = snnbridge.energy(resnets[backend], test_input)
        assert r["backend"] == backend
        for a, b in zip(ref["layers"], r["layers"]):
            assert (a["name"], a["synops"], a["spikes"], a["macs"], a["adds"]) == (
                b["name"], b["synops"], b["spikes"], b["macs"], b["adds"])


def test_running_sum_of_per_step_counts_is_a_shorter_run(resnets, test_input):
    snn = resnets["torch"]
    long = snnbridge.energy(snn, test_input, 12, per_step=True)["total"]["per_step"]
    short = snnbridge.energy(snn, test_input, 5)["total"]
    for key in ("synops", "macs", "adds", "neuron_updates", "spikes", "energy_pj"):
        assert sum(long[key][:5]) == pytest.approx(short[key], rel=1e-12), key


def test_json_round_trip(resnets, test_input):
    r = snnbridge.energy(resnets["spikingjelly"], test_input, per_step=True)
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r
    assert len(r["total"]["per_step"]["synops"]) == r["steps_run"] == 6


def test_warmup_steps_are_counted():
    snn = _convert(_two_site_mlp(), RAMP)
    for site in snn.sites.values():
        site.corrections.append(WarmupShift())  # 2 uncounted network warm-up steps
    r = snnbridge.energy(snn, RAMP, per_step=True)
    assert r["warmup"] == 2 and len(r["total"]["per_step"]["synops"]) == 6
    assert r["total"]["neuron_updates"] == (4 + 3) * 6
    assert any("warm-up" in n for n in r["notes"])


def test_a_run_shorter_than_the_lookahead_counts_the_padded_steps():
    """T = 2 under a 4-step look-ahead simulates 4 counted steps (the first 2 returned): all of them cost."""
    from helpers.qcfs_family import qcfs_mlp

    net = qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels=4, seed=1)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    snn = snnbridge.convert(net, ["qcfs", {"cos": {"rho": 4}}], example_input=x[:1], timesteps=4, progress=False)
    short, full = (snnbridge.energy(snn, x, timesteps=t, per_step=True) for t in (2, 4))
    assert short["steps_run"] == full["steps_run"] == 8 and short["timesteps"] == 2
    assert short["total"]["synops"] == full["total"]["synops"] > 0
    assert short["total"]["neuron_updates"] == full["total"]["neuron_updates"] == (12 + 10) * (4 + 4)
    assert any("look-ahead" in n for n in short["notes"]) and not any("look-ahead" in n for n in full["notes"])


def test_step_bias_adds():
    snn = _convert(_two_site_mlp(), RAMP)
    name = list(snn.sites)[1]
    snn.set_spec(name, snn.specs[name].replace(step_bias=0.0625))
    r = snnbridge.energy(snn, RAMP)
    assert _layer(r, name)["adds"] == 3 * 4


def test_spikingjelly_op_counter_agrees_on_01_spikes_and_misses_weighted_ones():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

    def sj_synops(snn, x):
        counter = SynOpCounter()
        with torch.no_grad(), DispatchCounterMode([counter]):
            snn(x)
        return counter.get_total()

    snn = _convert(_two_site_mlp(), RAMP)
    snn.forward_on_means = False  # the head sees per-step 0/1 spikes too
    assert sj_synops(snn, RAMP) == snnbridge.energy(snn, RAMP)["total"]["synops"] == 21 + 14
    # the same network with thresholds 0.5 on inputs scaled by 0.5: the same spikes, weighted by 0.5
    half = _convert(_two_site_mlp(), RAMP * 0.5, threshold=0.5)
    half.forward_on_means = False
    assert snnbridge.energy(half, RAMP * 0.5)["total"]["synops"] == 21 + 14
    assert sj_synops(half, RAMP * 0.5) == 0


def test_functional_layers_are_listed_as_uncounted():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2, 4))

        def forward(self, x):
            return F.linear(torch.relu(x), self.w)

    snn = _convert(Functional().eval(), RAMP)
    r = snnbridge.energy(snn, RAMP)
    assert [u["op"] for u in r["uncounted"]] == ["linear"]


def test_errors():
    snn = _convert(_two_site_mlp(), RAMP)
    with pytest.raises(OptionError, match="fp32_45nm"):
        snnbridge.energy(snn, RAMP, costs="fp32")
    with pytest.raises(OptionError, match="'neuron'"):
        snnbridge.energy(snn, RAMP, costs={"mac": 1.0, "ac": 1.0, "nueron": 1.0})
    with pytest.raises(OptionError, match="lack ac"):
        snnbridge.energy(snn, RAMP, costs={"mac": 1.0})
    with pytest.raises(OptionError, match=">= 0"):
        snnbridge.energy(snn, RAMP, costs={"mac": 1.0, "ac": -1.0})
    with pytest.raises(OptionError, match=">= 0"):
        snnbridge.energy(snn, RAMP, costs={"mac": math.nan, "ac": 1.0})
    with pytest.raises(OptionError, match="preset"):
        snnbridge.energy(snn, RAMP, costs=4.6)
    with pytest.raises(InputError, match="converted model"):
        snnbridge.energy(_two_site_mlp(), RAMP)
    with pytest.raises(InputError, match="positive whole number"):
        snnbridge.energy(snn, RAMP, timesteps=0)
    with pytest.raises(InputError, match="does not match"):
        snnbridge.energy(snn, torch.rand(1, 5))


def test_a_module_shared_by_spikes_and_analog_values_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    snn = _convert(Shared().eval(), RAMP)
    assert _layer(snnbridge.energy(snn, RAMP), "fc (fc)")["runs"] == "once"  # both calls run once (prefix, head)
    snn.forward_on_means = False
    with pytest.raises(UnsupportedModelError, match="'fc'"):
        snnbridge.energy(snn, RAMP)


def test_user_model_untouched_and_no_hooks_left():
    snn = _convert(_two_site_mlp(), RAMP)
    before = snnbridge.energy(snn, RAMP)
    assert not snn._state.recordings
    assert all(not m._forward_hooks for m in snn.modules())
    assert snnbridge.energy(snn, RAMP) == before
