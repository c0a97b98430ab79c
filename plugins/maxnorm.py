"""Data-based max-norm (Diehl et al., IJCNN 2015), with reset by subtraction.

``theta_l = max`` of site l's activations over the calibration data (the true maximum,
not a running average), layer-wise or per channel (``channelwise``). This is the threshold
form of Diehl's weight normalisation: keeping the weights, threshold lambda and spike
amplitude lambda give the same spikes as scaling ``W_l`` by ``lambda_{l-1} / lambda_l`` with
threshold 1 (Bu et al., AAAI 2022, show the equivalence).

``momentum`` reproduces SpikingJelly's ``VoltageHook`` instead: an exponential moving
average of per-batch maxima (``ema <- (1 - m) ema + m max_batch``; the first batch
initialises).
"""

from __future__ import annotations

from snnbridge import EMAMaxObserver, MaxObserver, Option, PluginInfo, hookimpl

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


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    axis = 1 if options["channelwise"] else None
    momentum = options["momentum"]
    observer = MaxObserver(axis) if momentum is None else EMAMaxObserver(momentum, axis)
    return {name: ctx.usable_threshold(name, value, NAME) for name, value in ctx.collect(observer).items()}


@hookimpl
def snnbridge_tune_variants():
    # per-channel maxima are lower in most channels: fewer spikes lost to a few large activations
    return [{}, {"channelwise": True}]
