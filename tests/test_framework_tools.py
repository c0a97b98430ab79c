"""SpikingJelly's and snnTorch's own tools on converted models, and ``snnbridge.record`` on every backend.

Monitors and Leaky forward hooks must give one ``[T, B, ...]`` record per site per forward of the
counted steps, whatever the time chunking and pre-simulation (snnbridge.neurons, "Framework hooks");
the records must equal ``snnbridge.record`` and the torch backend's spikes. Also: reset calls,
the examples in examples/frameworks/, and the errors of ``snnbridge.record``.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import snntorch
import snntorch.utils
import torch
from spikingjelly.activation_based import functional, monitor, neuron

import snnbridge
from helpers import zoo
from helpers.sj_legacy import REPO, legacy_env
from snnbridge import InputError

T = 7  # with time_chunk = 3: chunks of 3, 3, 1
NEURONS = (neuron.IFNode, neuron.ActivationAwareIFNode)
RECIPES = {"scalar": ["maxnorm"], "channel": [{"robustnorm": {"percentile": 99.0, "channelwise": True}}]}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(11)
    return [torch.rand(8, 3, 16, 16, generator=g) for _ in range(2)], torch.rand(4, 3, 16, 16, generator=g)


def _ann():
    torch.manual_seed(0)
    return zoo.TinyConvNet().eval()


def _convert(kind, backend, data, timesteps=T):
    calib, _ = data
    return snnbridge.convert(_ann(), RECIPES[kind], calibration=calib, backend=backend,
                             timesteps=timesteps, progress=False)


@pytest.fixture(scope="module")
def torch_records(data):
    """snnbridge.record on the torch backend (one chunk): the yardstick."""
    return {kind: snnbridge.record(_convert(kind, "torch", data), data[1], what=("spikes", "v", "drive"))
            for kind in RECIPES}


@pytest.fixture(scope="module")
def presim_models():
    """QCFS networks with a network warm-up (srp) or a per-site look-ahead (cos), on every backend."""
    torch.manual_seed(0)
    prepared = snnbridge.prepare(zoo.TinyConvNet(), [{"qcfs": {"levels": 4}}]).eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    recipes = {"srp": ["qcfs", {"srp": {"tau": 2}}], "cos": ["qcfs", {"cos": {"rho": 2}}]}
    return x, {(name, be): snnbridge.convert(prepared, rec, backend=be, timesteps=4, example_input=x[:1],
                                             progress=False)
               for name, rec in recipes.items() for be in ("torch", "spikingjelly", "snntorch")}


def _module_names(snn):
    return {m: n for n, m in snn.named_modules()}


# -- SpikingJelly monitors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scalar", "channel"])
def test_sj_monitors_give_one_full_record_per_site_per_forward(kind, data, torch_records):
    snn = _convert(kind, "spikingjelly", data)
    x = data[1]
    ours = snnbridge.record(snn, x, what=("spikes", "v", "drive"))
    snn.time_chunk = 3
    want_class = neuron.IFNode if kind == "scalar" else neuron.ActivationAwareIFNode
    for m in snn.modules():
        if isinstance(m, NEURONS):
            assert type(m) is want_class
            m.store_v_seq = True
    out = monitor.OutputMonitor(snn, NEURONS)
    rate = monitor.OutputMonitor(snn, NEURONS, function_on_output=lambda s: s.mean(0))
    vseq = monitor.AttributeMonitor("v_seq", False, snn, NEURONS)
    inp = monitor.InputMonitor(snn, NEURONS)
    y1 = snn(x)
    y2 = snn(x)
    assert torch.equal(y1, y2)
    names = _module_names(snn)
    for site, s in snn.sites.items():
        name = names[s.neuron.nodes[0]]
        ref = torch_records[kind][site]
        spikes, volts, inputs, rates = out[name], vseq[name], inp[name], rate[name]
        assert len(spikes) == len(volts) == len(inputs) == len(rates) == 2  # one per forward, not one per chunk
        for k in range(2):
            assert spikes[k].shape == (T, 4, *s.info.shape)
            assert set(spikes[k].unique().tolist()) <= {0.0, 1.0}  # 0/1 spikes, not the weighted output
            assert torch.equal(spikes[k], ours[site]["spikes"]) and torch.equal(spikes[k], ref["spikes"])
            assert torch.equal(volts[k], ours[site]["v"])
            torch.testing.assert_close(volts[k], ref["v"], atol=1e-6, rtol=0)
            assert torch.equal(inputs[k], ours[site]["drive"])
            assert torch.equal(rates[k], ref["spikes"].mean(0))
    assert sum(ref["spikes"].sum() for ref in torch_records[kind].values()) > 0
    for mon in (out, rate, vseq, inp):
        mon.remove_hooks()
    assert not any(s.neuron.framework_hooks() or s.neuron.deferring_hooks for s in snn.sites.values())


def test_per_channel_neurons_are_not_basenodes(data):
    """Why docs/frameworks.md says to monitor ActivationAwareIFNode: a BaseNode monitor misses per-channel sites."""
    snn = _convert("channel", "spikingjelly", data)
    with monitor.OutputMonitor(snn, neuron.BaseNode) as base, monitor.OutputMonitor(snn, NEURONS) as both:
        snn(data[1])
    assert base.records == [] and len(both.records) == len(snn.sites)


@pytest.mark.parametrize("presim", ["srp", "cos"])
def test_sj_monitors_hold_the_counted_steps_after_a_presimulation(presim, presim_models):
    x, models = presim_models
    snn = models[(presim, "spikingjelly")]
    ref = snnbridge.record(models[(presim, "torch")], x, what=("spikes", "v", "drive", "output"))
    assert snn.steps_run == 6 and (snn.warmup if presim == "srp" else snn.lookahead) == 2
    snn.time_chunk = 3  # srp: the warm-up ends inside the first chunk
    for m in snn.modules():
        if isinstance(m, NEURONS):
            m.store_v_seq = True
    with monitor.OutputMonitor(snn, NEURONS) as out, monitor.AttributeMonitor("v_seq", False, snn, NEURONS) as vs, \
            monitor.AttributeMonitor("v", True, snn, NEURONS) as v_before, \
            monitor.AttributeMonitor("v", False, snn, NEURONS) as v_after:
        snn(x)
    names = _module_names(snn)
    for site, s in snn.sites.items():
        name, r = names[s.neuron.nodes[0]], ref[site]
        (spk,), (v_seq,), (v0,), (v1,) = out[name], vs[name], v_before[name], v_after[name]
        assert spk.shape[0] == 4 and torch.equal(spk, r["spikes"])
        torch.testing.assert_close(v_seq, r["v"], atol=1e-6, rtol=0)
        torch.testing.assert_close(v1, r["v"][-1], atol=1e-6, rtol=0)
        # the state the counted steps started from: v(1) = v0 + drive(1) - output(1)
        torch.testing.assert_close(v0, r["v"][0] - r["drive"][0] + r["output"][0], atol=1e-5, rtol=0)


def test_sj_single_step_mode_monitors_see_one_call_per_counted_step(data, torch_records):
    snn = _convert("scalar", "spikingjelly", data)
    snn.time_chunk = 3
    functional.set_step_mode(snn, "s")
    with monitor.OutputMonitor(snn, NEURONS) as out, monitor.AttributeMonitor("v", False, snn, NEURONS) as v:
        snn(data[1])
    names = _module_names(snn)
    for site, s in snn.sites.items():
        name = names[s.neuron.nodes[0]]
        assert len(out[name]) == T and out[name][0].shape == (4, *s.info.shape)
        assert torch.equal(torch.stack(out[name]), torch_records["scalar"][site]["spikes"])
        torch.testing.assert_close(torch.stack(v[name]), torch_records["scalar"][site]["v"], atol=1e-6, rtol=0)


def test_sj_reset_net_works_with_monitors_attached(data):
    snn = _convert("channel", "spikingjelly", data)
    snn.time_chunk = 3
    x = data[1]
    with monitor.OutputMonitor(snn, NEURONS) as out:
        y = snn(x)
        nodes = [n for n in snn.modules() if isinstance(n, NEURONS)]
        assert all(isinstance(n.v, torch.Tensor) and n.v.shape[0] == 4 for n in nodes)  # the last membrane
        functional.reset_net(snn)
        assert all(not isinstance(n.v, torch.Tensor) or not n.v.any() for n in nodes)
        assert torch.equal(snn(x), y)
    assert len(out.records) == 2 * len(snn.sites)


def test_a_hook_that_changes_the_output_is_refused_loudly(data):
    snn = _convert("scalar", "spikingjelly", data)
    site = next(iter(snn.sites.values()))
    handle = site.neuron.nodes[0].register_forward_hook(lambda m, a, o: o * 0)
    y_ref = _convert("scalar", "spikingjelly", data)(data[1])
    with pytest.warns(RuntimeWarning, match="cannot replace a neuron's input or output"):
        y = snn(data[1])
    handle.remove()
    assert torch.equal(y, y_ref)  # the returned value was not applied


def test_a_failed_run_does_not_leave_hooks_silenced(data):
    snn = _convert("scalar", "spikingjelly", data)
    sites = list(snn.sites.values())
    first, last = sites[0], sites[-1]
    calls = []
    first.neuron.nodes[0].register_forward_hook(lambda m, a, o: calls.append(1))
    snn.time_chunk = 2

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    last.neuron.simulate = boom  # the first site has run (hooks silenced) when the last one fails
    with pytest.raises(RuntimeError, match="boom"):
        snn(data[1])
    assert first.neuron.deferring_hooks is False and calls == []
    first.neuron.simulate(torch.rand(2, 4, *first.info.shape), torch.zeros(4, *first.info.shape))
    assert calls == [1]  # outside a run the hooks fire as usual


def test_sj_legacy_monitors_record_each_channel_group():
    """SpikingJelly 0.0.0.0.14: one IFNode per distinct threshold; each records its own channels, in full T."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "sj_legacy_monitors.py")],
                          env=legacy_env(), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SJ_LEGACY_MONITORS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    report = json.loads(lines[-1].split(" ", 1)[1])
    assert report["generation"] == "0.0.0.0.x"
    for kind in ("scalar", "channel"):
        r = report[kind]
        assert r["spikes_equal"] and r["v_equal"] and r["covered"]
        assert all(len(recs) == 2 and recs[0][0] == 7 for recs in r["records_per_node"].values())
    assert set(report["scalar"]["groups"].values()) == {1}
    assert max(report["channel"]["groups"].values()) > 1


# -- snnTorch ------------------------------------------------------------------------------------------------


def _leaky_hooks(snn):
    recs = {site: {"spk": [], "mem": [], "x": []} for site in snn.sites}
    handles = []
    for site, s in snn.sites.items():
        def hook(module, args, out, site=site):
            recs[site]["spk"].append(out[0])
            recs[site]["mem"].append(out[1])
            recs[site]["x"].append(args[0])
        handles.append(s.neuron.leaky.register_forward_hook(hook))
    return recs, handles


@pytest.mark.parametrize("kind", ["scalar", "channel"])
def test_snntorch_leaky_hooks_give_stackable_records(kind, data, torch_records):
    snn = _convert(kind, "snntorch", data)
    ours = snnbridge.record(snn, data[1], what=("spikes", "v", "drive"))
    snn.time_chunk = 3
    recs, handles = _leaky_hooks(snn)
    snn(data[1])
    for h in handles:
        h.remove()
    for site, s in snn.sites.items():
        spk, mem = torch.stack(recs[site]["spk"]), torch.stack(recs[site]["mem"])
        assert spk.shape == (T, 4, *s.info.shape)
        assert torch.equal(spk, ours[site]["spikes"]) and torch.equal(spk, torch_records[kind][site]["spikes"])
        th = s.spec.threshold_tensor(spk, 2)
        torch.testing.assert_close(mem - th * spk, torch_records[kind][site]["v"], atol=1e-5, rtol=0)
        assert torch.equal(torch.stack(recs[site]["x"]), ours[site]["drive"])
    assert not any(s.neuron.framework_hooks() for s in snn.sites.values())


@pytest.mark.parametrize("presim", ["srp", "cos"])
def test_snntorch_hooks_leave_the_presimulation_out(presim, presim_models):
    x, models = presim_models
    snn = models[(presim, "snntorch")]
    ref = snnbridge.record(models[(presim, "torch")], x)
    snn.time_chunk = 3
    recs, handles = _leaky_hooks(snn)
    snn(x)
    for h in handles:
        h.remove()
    for site in snn.sites:
        assert len(recs[site]["spk"]) == 4  # T, not steps_run = 6
        assert torch.equal(torch.stack(recs[site]["spk"]), ref[site]["spikes"])


def test_snntorch_reset_calls(data):
    """No reset is needed; snntorch.utils.reset(snn) finds nothing; reset_mem / a global reset are harmless."""
    snn = _convert("channel", "snntorch", data)
    x = data[1]
    y = snn(x)
    leakies = [s.neuron.leaky for s in snn.sites.values()]
    kept = [lk.mem.clone() for lk in leakies]
    assert all(m.shape[0] == 4 and m.abs().sum() > 0 for m in kept)  # the last step's membrane stays, as in snnTorch
    snntorch.utils.reset(snn)  # looks at snn's direct children only: no Leaky there
    assert all(torch.equal(lk.mem, m) for lk, m in zip(leakies, kept))
    own = torch.nn.Sequential(torch.nn.Linear(3, 3), snntorch.Leaky(beta=0.9))
    snntorch.utils.reset(own)  # finds a Leaky: zeroes every Leaky of the process, ours included
    assert all(lk.mem.shape == m.shape and not lk.mem.any() for lk, m in zip(leakies, kept))
    assert torch.equal(snn(x), y)
    for lk in leakies:
        lk.reset_mem()
        assert not lk.mem.any()
    snn(torch.rand(2, 3, 16, 16))  # another batch size in between
    assert torch.equal(snn(x), y)  # every run starts from the initial state


# -- snnbridge.record ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scalar", "channel"])
def test_record_agrees_on_every_backend(kind, data, torch_records):
    x = data[1]
    got = {be: snnbridge.record(_convert(kind, be, data), x, what=("spikes", "v", "output", "rate"))
           for be in ("torch", "spikingjelly", "snntorch")}
    ref = torch_records[kind]
    assert list(got["torch"]) == list(ref)
    for be, recs in got.items():
        assert list(recs) == list(ref)
        for site, r in recs.items():
            assert set(r) == {"spikes", "v", "output", "rate"}
            assert torch.equal(r["spikes"], ref[site]["spikes"]), (be, site)
            tol = 1e-5 if be == "snntorch" else 1e-6
            torch.testing.assert_close(r["v"], ref[site]["v"], atol=tol, rtol=0)
            assert r["rate"].shape == r["spikes"].shape[1:]
            torch.testing.assert_close(r["rate"], r["output"].mean(0))


def test_record_options(data, presim_models):
    snn = _convert("scalar", "torch", data)
    x = data[1]
    first = next(iter(snn.sites))
    one = snnbridge.record(snn, x, what="spikes", sites=first, timesteps=3)
    assert list(one) == [first] and list(one[first]) == ["spikes"] and one[first]["spikes"].shape[0] == 3
    assert torch.equal(one[first]["spikes"], snnbridge.record(snn, x, sites=[first])[first]["spikes"][:3])
    xs, models = presim_models
    srp = models[("srp", "torch")]
    with srp.record(keep="spikes") as rec:
        srp(xs)
    counted = snnbridge.record(srp, xs, what="spikes")
    for site in srp.sites:
        assert rec[site].spikes.shape[0] == 6 and torch.equal(counted[site]["spikes"], rec[site].spikes[2:])


def test_record_errors(data):
    snn = _convert("scalar", "torch", data)
    x = data[1]
    with pytest.raises(InputError, match=r"what='spike'.*Did you mean 'spikes'"):
        snnbridge.record(snn, x, what=("spike",))
    with pytest.raises(InputError, match="what may hold: drive, spikes, v, output, rate, drive_mean"):
        snnbridge.record(snn, x, what=())
    name = next(iter(snn.sites))
    with pytest.raises(InputError, match=rf"no site '{name}x'.*Did you mean '{name}'"):
        snnbridge.record(snn, x, sites=[name + "x"])
    with pytest.raises(InputError, match="takes a converted model"):
        snnbridge.record(zoo.TinyConvNet(), x)
    with pytest.raises(InputError, match="timesteps must be >= 1"):
        snnbridge.record(snn, x, timesteps=0)
    assert "record" in snnbridge.__all__


# -- examples -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["spikingjelly_monitors.py", "snntorch_tools.py"])
def test_examples_run(script, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = runpy.run_path(str(Path(REPO) / "examples" / "frameworks" / script))["main"](timesteps=4)
    printed = capsys.readouterr().out
    if script.startswith("spikingjelly"):
        assert {shape[0] for shape in result.values()} == {4} and len(result) == 4
        assert "ActivationAwareIFNode" in printed and "IFNode" in printed
    else:
        assert {shape[0] for shape in result["shapes"].values()} == {4}
        assert len(result["acc_vs_t"]) == 4 and 0.0 <= result["acc"] <= 1.0
        assert result["acc"] == pytest.approx(result["acc_vs_t"][-1])  # accuracy_rate on steps = sweep at T
        assert "ce_rate_loss" in printed
