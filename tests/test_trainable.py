"""Trainable converted SNNs: ``snn.set_surrogate(...)`` on every backend, end to end.

A small converted CNN (TinyConvNet, synthetic data, T = 4, float64) is fine-tuned with Adam on
cross-entropy of the decoded (time-mean) output through LocalZO; with the surrogate's own seed
the three backends draw the same samples in the same order, so their losses and spikes agree at
every step, and the loss goes down. Deterministic surrogates give the same parameter gradients on
every backend, per-channel thresholds (SpikingJelly's ``ActivationAwareIFNode``) included.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import snnbridge
from helpers import zoo
from snnbridge import BackendError

BACKENDS = ("torch", "spikingjelly", "snntorch")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 16, 16, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (12,), generator=g)


def _snn(backend, x, recipe=("maxnorm",), trainable=True):
    torch.manual_seed(0)
    ann = zoo.randomize_bn(zoo.TinyConvNet()).eval()
    snn = snnbridge.convert(ann, list(recipe), calibration=[x.float()], backend=backend, timesteps=4,
                            progress=False).double()
    for p in snn.parameters():
        p.requires_grad_(trainable)
    return snn


def _spikes(snn, x):
    with torch.no_grad(), snn.record(keep=("spikes",)) as rec:
        snn(x)
    return {name: rec[name].spikes for name in snn.sites}


def test_adam_with_localzo_trains_identically_on_every_backend(data):
    x, y = data
    runs = {}
    for backend in BACKENDS:
        snn = _snn(backend, x)
        snn.set_surrogate(snnbridge.surrogate({"localzo": {"seed": 3}}))
        opt = torch.optim.Adam(snn.parameters(), lr=0.01)
        losses, spikes = [], []
        for _ in range(4):
            spikes.append(_spikes(snn, x))
            opt.zero_grad()
            loss = F.cross_entropy(snn(x), y)  # CE on the time-mean output
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs[backend] = losses, spikes
    ref_losses, ref_spikes = runs["torch"]
    assert ref_losses[-1] < ref_losses[0] - 1e-3, ref_losses
    for backend in ("spikingjelly", "snntorch"):
        losses, spikes = runs[backend]
        assert losses == pytest.approx(ref_losses, rel=1e-9), backend
        for step, (ours, ref) in enumerate(zip(spikes, ref_spikes)):
            assert all(torch.equal(ours[n], ref[n]) for n in ref), (backend, step)


@pytest.mark.parametrize("recipe", [["maxnorm"], [{"maxnorm": {"channelwise": True}}]], ids=["scalar", "per-channel"])
def test_deterministic_surrogate_gives_the_same_parameter_gradients(data, recipe):
    x, y = data
    grads = {}
    for backend in BACKENDS:
        snn = _snn(backend, x[:6], recipe)
        if backend == "spikingjelly" and "channelwise" in str(recipe):
            from spikingjelly.activation_based import neuron
            assert all(isinstance(s.neuron.nodes[0], neuron.ActivationAwareIFNode) for s in snn.sites.values())
        snn.set_surrogate(snnbridge.surrogate({"sg": {"shape": "triangle"}}, framework=backend))
        F.cross_entropy(snn(x[:6]), y[:6]).backward()
        grads[backend] = {n: p.grad for n, p in snn.named_parameters()}
    ref = grads["torch"]
    assert sum(float(g.abs().sum()) > 0 for g in ref.values()) == len(ref)  # every parameter gets a gradient
    for backend in ("spikingjelly", "snntorch"):
        for name, g in grads[backend].items():
            torch.testing.assert_close(g, ref[name], rtol=1e-7, atol=1e-10, msg=f"{backend} {name}")


def test_set_surrogate_none_restores_each_backends_default(data):
    from spikingjelly.activation_based import surrogate as sj

    from snnbridge.adapters.snntorch import fire_ge

    x, _ = data
    localzo = snnbridge.surrogate("localzo")
    for backend in BACKENDS:
        snn = _snn(backend, x[:4])
        with torch.no_grad():
            before = snn(x[:4])
        assert snn.surrogate is None
        assert snn.set_surrogate(localzo) is None
        assert torch.equal(snn(x[:4]).detach(), before)  # forward spikes never change (the run needs gradients)
        assert snn.set_surrogate(None) is localzo and snn.surrogate is None
        for site in snn.sites.values():
            layer = site.neuron
            if backend == "spikingjelly":
                fn = layer.nodes[0].surrogate_function
                assert type(fn) is sj.Sigmoid and fn.alpha == 4.0
            elif backend == "snntorch":
                assert layer.leaky.spike_grad is fire_ge
            else:
                assert not layer.differentiable
        if backend == "torch":
            with pytest.raises(BackendError, match=r"snn\.set_surrogate\(snnbridge\.surrogate\('localzo'\)\)"):
                snn(x[:4])
        else:
            snn(x[:4]).sum().backward()  # the frameworks' own surrogates


def test_switching_surrogates_is_reversible_and_survives_set_spec(data):
    x, y = data
    snn = _snn("spikingjelly", x[:4])
    atan = snnbridge.surrogate({"sg": {"shape": "atan"}})
    with snn.using_surrogate(atan):
        assert snn.surrogate is atan
        name = next(iter(snn.sites))
        snn.set_spec(name, snn.specs[name])  # neurons rebuilt: the surrogate stays
        assert snn.sites[name].neuron.nodes[0].surrogate_function.surrogate is atan
    assert snn.surrogate is None
    assert snn.set_surrogate("localzo") is None  # a recipe is built
    assert snn.surrogate.source == {"localzo": {"distribution": "normal", "samples": 5, "delta": 0.5, "seed": None}}
    with pytest.raises(BackendError):
        with snn.using_surrogate(lambda v: v):
            pass
    assert snn.surrogate.source is not None  # a refused surrogate leaves the one before


def test_a_copy_owns_its_surrogate(data):
    x, y = data
    snn = _snn("snntorch", x[:4])
    snn.set_surrogate(snnbridge.surrogate({"localzo": {"seed": 1}}))
    twin = copy.deepcopy(snn)
    first = next(iter(twin.sites.values()))
    assert twin.surrogate is not snn.surrogate and first.neuron.leaky.spike_grad.surrogate is twin.surrogate
    for model in (snn, twin):
        F.cross_entropy(model(x[:4]), y[:4]).backward()
    for (_, a), (_, b) in zip(snn.named_parameters(), twin.named_parameters()):
        assert torch.equal(a.grad, b.grad)  # the same seed state was copied


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_and_load_reapply_a_recipe_surrogate(data, tmp_path, backend):
    x, y = data
    snn = _snn(backend, x[:4])
    snn.set_surrogate(snnbridge.surrogate({"sg": {"shape": "sigmoid", "alpha": 3.0}}, framework=backend))
    path = snnbridge.save(snn, tmp_path / "snn.pt")
    loaded, info = snnbridge.load(path, model=zoo.randomize_bn(zoo.TinyConvNet()), with_info=True)
    assert info["surrogate"] == {"recipe": [{"sg": {"shape": "sigmoid", "alpha": 3.0}}]}
    assert loaded.surrogate.options == {"shape": "sigmoid", "alpha": 3.0}
    loaded.double()
    for model in (snn, loaded):
        for p in model.parameters():
            p.requires_grad_(True)
        F.cross_entropy(model(x[:4]), y[:4]).backward()
    for (_, a), (_, b) in zip(snn.named_parameters(), loaded.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_native_surrogate_is_not_saved_and_says_so(data, tmp_path):
    from spikingjelly.activation_based import surrogate as sj

    x, _ = data
    snn = _snn("spikingjelly", x[:4])
    snn.set_surrogate(sj.ATan())
    with pytest.warns(RuntimeWarning, match=r"not saved.*snn\.set_surrogate"):
        path = snnbridge.save(snn, tmp_path / "snn.pt")
    assert snnbridge.load(path, model=zoo.randomize_bn(zoo.TinyConvNet())).surrogate is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pickled form keeps the module itself: no warning
        snnbridge.save(snn, tmp_path / "p.pt", pickled=True)
    back = snnbridge.load(tmp_path / "p.pt", trusted=True)
    assert type(back.surrogate) is sj.ATan
    snn.set_surrogate(snnbridge.surrogate("localzo", framework="spikingjelly"))  # our module pickles too
    snnbridge.save(snn, tmp_path / "q.pt", pickled=True)
    assert snnbridge.load(tmp_path / "q.pt", trusted=True).surrogate.surrogate.source["localzo"]["delta"] == 0.5
