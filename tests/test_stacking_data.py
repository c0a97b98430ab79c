"""Stacking the data-driven corrections with threshold sources and v(0) writers; the order rules.

Every stack runs on every installed backend with identical outputs, lowers the error its last
plugin targets against the stack without it, and keeps the accuracy at T = 8.
"""

from __future__ import annotations

import pytest
import torch

import snnbridge
from helpers import data_driven as dd

BACKENDS = snnbridge.get_registry().names("backend")
INSTALLED = set(snnbridge.get_registry().names())
T = 8
QCFS = [{"qcfs": {"lambda_init": 4.0, "levels": 8}}]
CLIPSHIFT = [{"clipshift": {"y_th": 2.0}}]
FTBC = {"ftbc": {"batches": 2, "iterations": 2}}


def _needs(*names):
    missing = [n for n in names if n not in INSTALLED]
    return pytest.mark.skipif(bool(missing), reason=f"plugin(s) {missing} not installed yet")


STACKS = [
    # id, ANN preparation (None = the plain ReLU network), base recipe, stacked recipe, error the last plugin targets
    pytest.param(None, ["robustnorm", {"calibration": {"preset": "none"}}], ["robustnorm", "calibration"], "channel",
                 id="robustnorm+calibration"),
    pytest.param(None, [{"calibration": {"preset": "none"}}], ["calibration"], "channel", id="calibration"),
    pytest.param(None, [{"ltb": {"iterations": 16}}], [{"ltb": {"iterations": 16}}, "calibration"], "channel",
                 id="ltb+calibration"),
    pytest.param(None, ["maxnorm"], ["maxnorm", FTBC], "steps", id="maxnorm+ftbc"),
    pytest.param(QCFS, ["qcfs"], ["qcfs", FTBC], "steps", id="qcfs+ftbc", marks=_needs("qcfs")),
    pytest.param(CLIPSHIFT, ["clipshift"], ["clipshift", FTBC], "steps", id="clipshift+ftbc",
                 marks=_needs("clipshift")),
]


@pytest.mark.parametrize("prep,base,stack,error", STACKS)
def test_stack_runs_on_every_backend_and_lowers_its_target_error(prep, base, stack, error):
    net = dd.trained_net() if prep is None else dd.trained_for(prep)
    data = dd.calibration_batches()
    plain = snnbridge.convert(net, base, calibration=data, timesteps=T, progress=False)
    x = dd.test_set()[0][:96]
    outs = {}
    for backend in BACKENDS:
        snn = snnbridge.convert(net, stack, calibration=data, timesteps=T, progress=False, backend=backend)
        outs[backend] = snn(x)
        if backend == "torch":
            e0, e1 = dd.layer_errors(plain, T, net), dd.layer_errors(snn, T, net)
            assert dd.total(e1, error) < 0.8 * dd.total(e0, error), (e0, e1)
            assert dd.accuracy(snn) >= dd.accuracy(plain)
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["torch"], rtol=0, atol=1e-5, msg=backend)
    assert set(BACKENDS) >= {"torch", "spikingjelly", "snntorch"}


def test_ltb_then_calibration_keeps_theta_half_and_adds_no_shift():
    net, data = dd.trained_net(), dd.calibration_batches()
    snn = snnbridge.convert(net, ["ltb", {"calibration": {"preset": "none"}}], calibration=data, timesteps=T,
                            progress=False)
    for spec in snn.specs.values():
        assert spec.step_bias is None  # the per-step half shift stays off next to v0 = theta/2
        torch.testing.assert_close(spec.v0, 0.5 * spec.threshold)
    pc = snnbridge.convert(net, ["ltb", {"calibration": {"steps": ["pc"]}}], calibration=data, timesteps=T,
                           progress=False)
    for name, spec in pc.specs.items():  # PC is additive on top of the base v0
        assert spec.v0.shape == tuple(pc.sites[name].info.shape)
    assert any("shift off" in n for n in snn.report["notes"])


@_needs("opi")
def test_opi_then_calibration_uses_v0_half_without_shift():
    net, data = dd.trained_net(), dd.calibration_batches()
    snn = snnbridge.convert(net, ["robustnorm", "opi", "calibration"], calibration=data, timesteps=T, progress=False)
    for spec in snn.specs.values():
        assert spec.step_bias is None and spec.v0 == pytest.approx(0.5 * spec.threshold)


@_needs("clipshift")
def test_clipshift_then_calibration_shifts_once():
    net, data = dd.trained_for(CLIPSHIFT), dd.calibration_batches()
    snn = snnbridge.convert(net, ["clipshift", {"calibration": {"preset": "none"}}], calibration=data, timesteps=T,
                            progress=False)
    for spec in snn.specs.values():
        assert spec.step_bias == pytest.approx(spec.threshold / (2 * T))


# -- order rules and conflicts (all raised before any work) -------------------------------------------------------


class _Untouchable:
    """Calibration data that fails the test if anything reads it."""

    def __iter__(self):
        raise AssertionError("the recipe error must come before any calibration data is read")

    def __len__(self):
        return 1


@pytest.mark.parametrize("recipe,error,match", [
    (["calibration", "ltb"], snnbridge.PluginConflictError, "'snn_calibration' must come after 'ltb'"),
    (["calibration", "robustnorm"], snnbridge.PluginConflictError, "must come after 'robustnorm'"),
    (["ftbc", "maxnorm"], snnbridge.PluginConflictError, "'ftbc' needs 'threshold' from an earlier plugin"),
    (["ftbc"], snnbridge.MissingRequirementError, "'ftbc' needs 'threshold'"),
    (["maxnorm", "ltb"], snnbridge.PluginConflictError, "both provide 'threshold'"),
    (["ltb", {"calibration": {"shift": "on"}}], snnbridge.PluginConflictError,
     "shift: on adds \\+theta/\\(2T\\).*'ltb' sets the base initial potential"),
    pytest.param(["maxnorm", "calibration", "opi"], snnbridge.PluginConflictError,
                 "'snn_calibration' must come after 'opi'", marks=_needs("opi")),
    pytest.param(["clipshift", {"calibration": {"shift": "on"}}], snnbridge.PluginConflictError,
                 "'clipshift' already adds a per-step shift", marks=_needs("clipshift")),
    pytest.param(["qcfs", {"calibration": {"shift": "on"}}], snnbridge.PluginConflictError,
                 "'qcfs' sets the base initial potential", marks=_needs("qcfs")),
    ([{"calibration": {"steps": ["bc", "xx"]}}], snnbridge.OptionError, "out of range"),
    ([{"ltb": {"iterations": 0}}], snnbridge.OptionError, "iterations >= 1"),
])
def test_order_rules_and_conflicts_fail_before_any_work(recipe, error, match):
    with pytest.raises(error, match=match):
        snnbridge.convert(dd.trained_net(), recipe, calibration=_Untouchable(), timesteps=T, progress=False)
