"""Robust normalisation (Rueckauer et al., Frontiers in Neuroscience 2017).

Threshold = the p-th percentile of a site's activations over the calibration data
(default 99.9), layer-wise or per channel. Percentiles use linear interpolation over a
uniform random sample of at most ``max_samples`` activations per site (per channel when
channel-wise); with fewer activations than that the percentile is exact. By default the
percentile is taken over *all* post-ReLU values, zeros included, as SpikingJelly does;
``nonzero: true`` takes it over positive values only (the two conventions give different
thresholds; SpikingJelly's ``RateCodingRecipe`` counts the zeros).
"""

from __future__ import annotations

from snnbridge import Option, PercentileObserver, PluginInfo, hookimpl

NAME = "robustnorm"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="threshold = p-th percentile of activations (Rueckauer et al. 2017)",
                      reference="Rueckauer et al., Conversion of continuous-valued deep networks to efficient "
                                "event-driven networks for image classification, Front. Neurosci. 2017",
                      provides=("threshold",), needs_data=True)


@hookimpl
def snnbridge_add_options():
    return [
        Option("percentile", float, 99.9, "percentile of the activations used as threshold",
               check=lambda p: 0 < p <= 100, check_help="0 < percentile <= 100"),
        Option("channelwise", bool, False, "one threshold per channel (per feature for Linear)"),
        Option("nonzero", bool, False, "take the percentile over positive activations only"),
        Option("max_samples", int, 1 << 20, "activations sampled per site (per channel if channel-wise)",
               check=lambda n: n >= 100, check_help="max_samples >= 100"),
    ]


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    observer = PercentileObserver(options["percentile"], 1 if options["channelwise"] else None,
                                  options["max_samples"], options["nonzero"])
    return {name: ctx.usable_threshold(name, value, NAME) for name, value in ctx.collect(observer).items()}


@hookimpl
def snnbridge_tune_variants():
    # Rueckauer et al. pick p per network: a higher p clips less, a lower p fires more at small T
    return [{}, {"percentile": 99.99}, {"channelwise": True}]
