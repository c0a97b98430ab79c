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
