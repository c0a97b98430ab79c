"""Distributed conversion on two gloo processes equals one process that saw the union of the shards.

Rank r converts with its own shard (rank r's half of every calibration batch); the one-process
reference converts with the whole batches, so batch i is the union of the ranks' batches i (the
rule in snnbridge.distributed). Thresholds, specs, corrections and per-T predictions must agree,
every rank must end bit-identical (convert checks a checksum), and bad set-ups must fail clearly on
every rank instead of hanging.
"""

from __future__ import annotations

import pytest
import torch

import snnbridge
from helpers import zoo
from helpers.dist import run_ranks

WORLD, PER_RANK, BATCHES = 2, 8, 2

RECIPES = {
    "maxnorm": ["maxnorm"],
    "maxnorm channel-wise": [{"maxnorm": {"channelwise": True}}],
    "robustnorm": ["robustnorm"],  # the union's values fit the reservoir: the percentile is exact
    "robustnorm channel-wise": [{"robustnorm": {"channelwise": True, "percentile": 99.0}}],
    "ltb": [{"ltb": {"iterations": 3}}],  # cycles over the batches; the delay estimate reduces its means too
    "ltb auto": [{"ltb": {"candidates": [1, 4]}}],  # holds out batch 1 on every rank, scores on the union
    "calibration light": [{"snn_calibration": {"samples": WORLD * PER_RANK, "threshold_batches": BATCHES}}],
    "robustnorm + ftbc": ["robustnorm", {"ftbc": {"batches": BATCHES, "iterations": 2}}],
    "ftbc select": ["maxnorm", {"ftbc": {"batches": 1, "iterations": 2, "select": True}}],
}
# weight calibration fits on the union of every rank's images in rank order: with one batch per rank that is
# the one-process batch itself
ONE_BATCH = {"calibration advanced": [{"snn_calibration": {"preset": "advanced", "samples": WORLD * PER_RANK,
                                                           "wc_samples": WORLD * PER_RANK, "wc_iters": 20,
                                                           "wc_batch": 8, "threshold_batches": 1}}]}
T = 6


def _model():
    return zoo.small_resnet()


def _data():
    g = torch.Generator().manual_seed(11)
    batches = [torch.rand(WORLD * PER_RANK, 3, 8, 8, generator=g) for _ in range(BATCHES)]
    test = torch.rand(24, 3, 8, 8, generator=g)
    return batches, test


def _summary(snn, test):
    specs = {n: (s.threshold, s.v0, s.step_bias) for n, s in snn.specs.items()}
    with torch.no_grad():
        curve = snn.sweep(test)
    return {"specs": specs, "state": {k: v.clone() for k, v in snn.state_dict().items()},
            "window": snn.decode_window, "pred": curve.argmax(-1), "out": curve,
            "report": snn.report.get("distributed")}


def _convert_all(rank, world, recipes, batches_used):
    torch.manual_seed(0)
    batches, test = _data()
    mine = [b[rank * PER_RANK:(rank + 1) * PER_RANK] for b in batches[:batches_used]]
    return {name: _summary(snnbridge.convert(_model(), recipe, calibration=mine, timesteps=T, progress=False),
                           test)
            for name, recipe in recipes.items()}


def _close(a, b, what):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        torch.testing.assert_close(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=2e-5, rtol=1e-5,
                                   msg=lambda m: f"{what}: {m}")
    else:
        assert a == pytest.approx(b, abs=2e-5, rel=1e-5), what


def _check(results, recipes, batches_used):
    batches, test = _data()
    for name, recipe in recipes.items():
        one = _summary(snnbridge.convert(_model(), recipe, calibration=batches[:batches_used], timesteps=T,
                                         progress=False), test)
        r0, r1 = results[0][name], results[1][name]
        assert r0["report"]["ranks"] == WORLD and r0["report"]["checksum"] == r1["report"]["checksum"], name
        for k in r0["state"]:  # every rank bit-identical
            assert torch.equal(r0["state"][k], r1["state"][k]), (name, k)
        for site, (th, v0, bias) in one["specs"].items():
            for what, mine, ref in zip(("threshold", "v0", "step_bias"), r0["specs"][site], (th, v0, bias)):
                if ref is None:
                    assert mine is None, (name, site, what)
                else:
                    _close(mine, ref, f"{name} {site} {what}")
        for k, v in one["state"].items():
            _close(r0["state"][k], v, f"{name} {k}")
        assert r0["window"] == one["window"], name
        assert torch.equal(r0["pred"], one["pred"]), name  # the same per-T predictions, hence accuracy
        torch.testing.assert_close(r0["out"], one["out"], atol=1e-4, rtol=1e-4)


def test_every_data_driven_recipe_equals_one_process_on_the_union():
    results = run_ranks(_convert_all, WORLD, args=(RECIPES, BATCHES), timeout=240)
    _check(results, RECIPES, BATCHES)


def test_weight_calibration_equals_one_process_on_the_union():
    results = run_ranks(_convert_all, WORLD, args=(ONE_BATCH, 1), timeout=240)
    _check(results, ONE_BATCH, 1)


def _uneven(rank, world):
    batches, _ = _data()
    mine = batches[: 1 + rank]  # rank 1 holds one batch more
    try:
        snnbridge.convert(_model(), ["maxnorm"], calibration=mine, timesteps=T, progress=False)
    except snnbridge.InputError as e:
        return str(e)
    return None


def test_unequal_batch_counts_are_refused_on_every_rank_before_any_collective():
    for message in run_ranks(_uneven, WORLD):
        assert message and "number of calibration batches" in message and "rank 0: 1, rank 1: 2" in message
        assert "DistributedSampler" in message


class _RankThreshold:
    """A careless plugin: each rank keeps its own threshold (no reduction)."""

    name = "rankthreshold"

    @snnbridge.hookimpl
    def snnbridge_plugin_info(self):
        return snnbridge.PluginInfo(summary="rank-dependent threshold (test)", provides=("threshold",))

    @snnbridge.hookimpl
    def snnbridge_estimate_threshold(self, ctx):
        return {n: 1.0 + ctx.rank for n in ctx.sites}


class _NoReduce(snnbridge.Observer):
    def reset(self):
        self.value = torch.zeros(())

    def observe(self, x):
        self.value = torch.maximum(self.value, x.max())

    def compute(self):
        return self.value


class _NoReduceThreshold(_RankThreshold):
    name = "noreduce"

    @snnbridge.hookimpl
    def snnbridge_estimate_threshold(self, ctx):
        return {n: float(v) + 0.1 for n, v in ctx.collect(_NoReduce()).items()}


def _careless(rank, world):
    batches, _ = _data()
    mine = [b[rank * PER_RANK:(rank + 1) * PER_RANK] for b in batches]
    out = []
    for plugin in (_RankThreshold(), _NoReduceThreshold()):
        try:
            snnbridge.convert(_model(), [plugin], calibration=mine, timesteps=T, progress=False)
            out.append(None)
        except snnbridge.SnnbridgeError as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


def test_a_plugin_that_does_not_reduce_is_caught():
    for diverged, no_reduce in run_ranks(_careless, WORLD):
        assert diverged.startswith("InputError") and "ranks disagree on the converted SNN" in diverged
        assert no_reduce.startswith("CalibrationError") and "_NoReduce has no reduce()" in no_reduce
