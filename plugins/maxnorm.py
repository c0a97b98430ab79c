"""Data-based max-norm (Diehl et al., IJCNN 2015) with reset by subtraction.

Threshold of each site = the largest activation seen on the calibration data (a true
global maximum, not a running average), layer-wise or per channel. This is the threshold
form of Diehl's weight normalisation: keeping the weights and using threshold lambda with
spike amplitude lambda gives the same spikes as scaling ``W^l`` by ``lambda^{l-1}/lambda^l``
with threshold 1 (METHODS.md 9.1 and 12.1).

``momentum`` reproduces SpikingJelly's ``VoltageHook`` instead: an exponential moving
average of per-batch maxima (first batch initialises).
"""

from __future__ import annotations

import torch

from snnbridge import Option, PluginInfo, hookimpl

from ._stats import positive_thresholds

NAME = "maxnorm"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="threshold = maximum activation over the calibration data (Diehl et al. 2015)",
                      reference="Diehl et al., Fast-classifying, high-accuracy spiking deep networks through weight "
                                "and threshold balancing, IJCNN 2015",
                      provides=("threshold",), needs_data=True)


@hookimpl
def snnbridge_add_options():
    return [
        Option("channelwise", bool, False, "one threshold per channel (per feature for Linear) instead of per layer"),
        Option("momentum", float, None, "EMA momentum over per-batch maxima (SpikingJelly's 0.1); unset = true max",
               nullable=True, check=lambda m: m is None or 0 < m <= 1, check_help="0 < momentum <= 1"),
    ]


def batch_ema(ctx, reduce, momentum: float, channelwise: bool) -> dict[str, torch.Tensor]:
    """EMA over calibration batches of a per-batch statistic ``reduce(tensor [C, N]) -> [C]``."""
    ema: dict[str, torch.Tensor] = {}

    def observe(name, t):
        v = t.detach().float()
        v = v.transpose(0, 1).reshape(v.shape[1], -1) if channelwise else v.reshape(1, -1)
        stat = reduce(v)
        ema[name] = stat if name not in ema else (1 - momentum) * ema[name] + momentum * stat

    with torch.no_grad(), ctx.hooks(observe):
        for x in ctx.batches(desc="ema statistics"):
            ctx.ann(x)
    return {n: (e if channelwise else e[0]) for n, e in ema.items()}


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    if options["momentum"] is not None:
        stats = batch_ema(ctx, lambda v: v.amax(dim=1), options["momentum"], options["channelwise"])
    else:
        stats = ctx.collect("max", channelwise=options["channelwise"])
    return {name: positive_thresholds(value, name, ctx, NAME) for name, value in stats.items()}
