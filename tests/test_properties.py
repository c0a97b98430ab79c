"""Property tests (hypothesis): neuron dynamics on every backend, recipe parsing, save/load round trips.

Values are drawn on a dyadic grid (multiples of 1/32 of the threshold) and simulated in
float64, so every sum is exact and the expected spikes are exact too: a mismatch is a real
difference of dynamics, never rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snnbridge
from helpers import zoo
from snnbridge import NeuronSpec, SnnbridgeError, simulate

BACKENDS = ["torch", "spikingjelly", "snntorch"]
GRID = 32
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _thresholds(channels: int):
    """Layer-wise (a power of two) or per-channel (a power of two per channel) thresholds."""
    exps = st.integers(-2, 2)
    return st.one_of(exps.map(lambda e: 2.0 ** e),
                     st.lists(exps, min_size=channels, max_size=channels).map(
                         lambda es: torch.tensor([2.0 ** e for e in es], dtype=torch.float64)))


def _theta(th, channels):
    return th * torch.ones(channels, dtype=torch.float64) if isinstance(th, float) else th


@st.composite
def constant_drive(draw):
    """Constant input 0 <= x <= theta and 0 <= v0 < theta, per channel, on the grid."""
    T, B, C = draw(st.integers(1, 24)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    th = draw(_thresholds(C))
    theta = _theta(th, C)
    i = torch.tensor(draw(st.lists(st.integers(0, GRID), min_size=B * C, max_size=B * C)), dtype=torch.float64)
    k = torch.tensor(draw(st.lists(st.integers(0, GRID - 1), min_size=B * C, max_size=B * C)), dtype=torch.float64)
    x = (i.view(B, C) / GRID) * theta
    v0 = (k.view(B, C) / GRID) * theta
    return T, th, theta, x, v0, i.view(B, C), k.view(B, C)


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(case=constant_drive())
def test_if_closed_form_for_constant_input(backend, case):
    """IF with reset by subtraction: after t steps of constant x <= theta from v0 < theta, exactly
    N(t) = floor((v0 + t x) / theta) spikes, and v(t) = v0 + t x - theta N(t)."""
    T, th, theta, x, v0, i, k = case
    x_seq = x.unsqueeze(0).expand(T, *x.shape).contiguous()
    res = simulate(NeuronSpec(threshold=th), x_seq, backend=backend, v_init=v0, return_v=True)
    t = torch.arange(1, T + 1, dtype=torch.float64).view(T, 1, 1)
    n_expected = torch.floor((k + t * i) / GRID)  # (v0 + t x) / theta on the grid, exact
    assert torch.equal(res.spikes.to(torch.float64).cumsum(0), n_expected)
    assert torch.equal(res.v_seq, v0 + t * x - theta * n_expected)


@st.composite
def random_drive(draw):
    """Any grid input in [-theta, 2 theta] (several spikes' worth) and any v0 in [-theta, 2 theta)."""
    T, B, C = draw(st.integers(1, 16)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    th = draw(_thresholds(C))
    theta = _theta(th, C)
    ints = st.integers(-GRID, 2 * GRID)
    xs = torch.tensor(draw(st.lists(ints, min_size=T * B * C, max_size=T * B * C)), dtype=torch.float64)
    vs = torch.tensor(draw(st.lists(ints, min_size=B * C, max_size=B * C)), dtype=torch.float64)
    return th, theta, xs.view(T, B, C) / GRID * theta, vs.view(B, C) / GRID * theta


def _reference(x_seq, v0, theta):
    """The IF rule written out step by step: fire on m >= theta, subtract theta."""
    v, spikes, volts = v0.clone(), [], []
    for x in x_seq:
        m = v + x
        s = (m >= theta).to(m.dtype)
        v = m - theta * s
        spikes.append(s)
        volts.append(v)
    return torch.stack(spikes), torch.stack(volts)


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(case=random_drive())
def test_every_backend_follows_the_if_rule(backend, case):
    th, theta, x_seq, v0 = case
    res = simulate(NeuronSpec(threshold=th), x_seq, backend=backend, v_init=v0, return_v=True)
    spikes, volts = _reference(x_seq, v0, theta)
    assert torch.equal(res.spikes.to(torch.float64), spikes)
    assert torch.equal(res.v_seq, volts)
    # charge is conserved: the final membrane is what came in minus what was fired
    assert torch.equal(res.v_last, v0 + x_seq.sum(0) - theta * spikes.sum(0))


# -- recipes ----------------------------------------------------------------------------------------------

PROVIDERS = ["maxnorm", {"maxnorm": {"channelwise": True}}, "robustnorm", {"robustnorm": {"percentile": 99.5}}, "ltb",
             "clipshift", {"clipshift": {"threshold_source": "y_th"}}]
QCFS = ["qcfs", {"qcfs": {"levels": 8}}]
MODIFIERS = [{"opi": {}}, {"snn_calibration": {"preset": "light"}}, {"ftbc": {"iterations": 1}}]
QCFS_MODIFIERS = ["cos", "srp"]


@st.composite
def valid_recipes(draw):
    """A threshold source first, then any subset of the methods that stack on it, in their documented order."""
    if draw(st.booleans()):
        first, pool = draw(st.sampled_from(QCFS)), MODIFIERS + QCFS_MODIFIERS
    else:
        first, pool = draw(st.sampled_from(PROVIDERS)), MODIFIERS
    rest = draw(st.lists(st.sampled_from(pool), unique_by=lambda e: str(e), max_size=3))
    return [first, *sorted(rest, key=lambda e: pool.index(e))]


def _yaml_round_trip(plain, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipes") / "r.yaml"
    path.write_text(yaml.safe_dump({"recipe": plain, "timesteps": 8}))
    config = snnbridge.load_config(path)
    assert snnbridge.build_recipe(config.recipe).to_list() == plain and config.timesteps == 8


@FAST
@given(picked=valid_recipes())
def test_stackable_recipes_build_and_round_trip(picked, tmp_path_factory):
    plain = snnbridge.build_recipe(picked).to_list()
    assert [next(iter(e)) for e in plain] == [snnbridge.get_registry().canonical(e if isinstance(e, str) else
                                                                                 next(iter(e))) for e in picked]
    assert snnbridge.build_recipe(plain).to_list() == plain  # resolved options are a fixed point
    _yaml_round_trip(plain, tmp_path_factory)


@FAST
@given(picked=st.lists(st.sampled_from(PROVIDERS + QCFS + MODIFIERS + QCFS_MODIFIERS), min_size=1, max_size=4))
def test_any_stack_builds_or_is_refused_with_a_named_error(picked):
    try:
        plain = snnbridge.build_recipe(picked).to_list()
    except SnnbridgeError as exc:  # a conflict, a duplicate, a missing requirement: the message names the fix
        assert "plugin" in str(exc) or "recipe" in str(exc)
        return
    assert snnbridge.build_recipe(plain).to_list() == plain


_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=8),
              st.sampled_from(["maxnorm", "ftbc", "percentile", "recipe", "timesteps"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8) | st.sampled_from(
        ["maxnorm", "robustnorm", "recipe", "timesteps", "backend"]), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=_junk)
def test_malformed_recipes_and_configs_raise_snnbridge_errors_only(data):
    """Whatever a recipe or config holds, the answer is a recipe or a SnnbridgeError (never a TypeError)."""
    for parse in (snnbridge.build_recipe, snnbridge.parse_config):
        try:
            parse(data)
        except SnnbridgeError as exc:
            assert str(exc)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{parse.__name__}({data!r}) raised {type(exc).__name__}: {exc}")


# -- save / load --------------------------------------------------------------------------------------------


@st.composite
def site_specs(draw, channels: int, steps: int):
    th = draw(st.one_of(st.floats(0.05, 4.0), st.lists(st.floats(0.05, 4.0), min_size=channels,
                                                          max_size=channels).map(torch.tensor)))
    v0 = draw(st.one_of(st.floats(-1.0, 1.0), st.lists(st.floats(-1.0, 1.0), min_size=channels,
                                                         max_size=channels).map(torch.tensor)))
    bias = draw(st.one_of(st.none(), st.floats(-0.3, 0.3),
                          st.lists(st.floats(-0.3, 0.3), min_size=steps, max_size=steps).map(torch.tensor),
                          st.lists(st.floats(-0.3, 0.3), min_size=steps * channels, max_size=steps * channels).map(
                              lambda v: torch.tensor(v).view(steps, channels))))
    return NeuronSpec(threshold=th, v0=v0, step_bias=bias)


@pytest.fixture(scope="module")
def converted():
    g = torch.Generator().manual_seed(4)
    calib = [torch.rand(8, 3, 8, 8, generator=g)]
    snns = {b: snnbridge.convert(zoo.small_resnet(), ["maxnorm"], calibration=calib, backend=b, timesteps=4,
                                 progress=False) for b in BACKENDS}
    return snns, torch.rand(3, 3, 8, 8, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_save_load_round_trip_of_any_specs(backend, data, converted, tmp_path):
    snns, x = converted
    snn = snns[backend]
    channels = {name: site.info.shape[0] for name, site in snn.sites.items()}
    for name, c in channels.items():
        snn.set_spec(name, data.draw(site_specs(c, 4), label=name))
    path = snnbridge.save(snn, tmp_path / f"{backend}.pt")
    loaded = snnbridge.load(path, model=zoo.SmallResNet)
    assert torch.equal(loaded.sweep(x), snn.sweep(x))
    for name in channels:
        a, b = snn.specs[name], loaded.specs[name]
        for field in ("threshold", "v0", "step_bias"):
            u, v = getattr(a, field), getattr(b, field)
            assert (torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v or (math.isnan(u) and math.isnan(v)))
