"""``meanmatch``: an example third-party snnbridge plugin, written against the public API only.

It is a teaching example of the two kinds of correction a plugin can attach, not a
published method:

1. **A T-specific per-step bias** (``PluginInfo(t_specific=True)``). For every site in
   network order, run the SNN on ``samples`` calibration images, compare the mean output of
   each step and channel, ``mean theta * s(t)``, with the untouched ANN's mean activation of
   that channel, and subtract ``alpha`` times the difference from the drive of that step::

       b[t, c] <- b[t, c] - alpha * (mean_{batch, positions} theta s_c(t) - mean a_c)

   The table lives in ``NeuronSpec.step_bias`` on top of whatever the recipe set before,
   so it stacks with any threshold source (``["qcfs", "meanmatch"]``, ``["ltb", "meanmatch"]``).
   Because it belongs to one T, the core gives the plugin the shared ``timesteps`` /
   ``on_mismatch`` options and attaches the check that warns when the SNN runs another T.

2. **A per-input correction** (``lookahead > 0``): every site pre-simulates the first
   ``lookahead`` steps of its own input (a :class:`snnbridge.SiteCorrection` with
   ``scope = "layer"``) and silences, for the counted run, the neurons whose membrane
   ended below ``-mask_margin * theta`` (driven hard negative: their spikes would be noise).

What it uses: ``ctx.take`` (calibration images), ``ctx.collect`` with a
:class:`snnbridge.MeanObserver`, ``snn.record`` (what each site outputs), ``spec.step_table``
and ``snn.set_spec`` (the bias table), ``snn.sites[name].corrections`` (the mask), and
``snnbridge.channels`` for the per-channel reductions. Register it in ``pyproject.toml``::

    [project.entry-points.snnbridge]
    meanmatch = "snnbridge_meanmatch"
"""

from __future__ import annotations

import math

import torch

from snnbridge import Adjustment, MeanObserver, Option, PluginInfo, SiteCorrection, channels, hookimpl

NAME = "meanmatch"


class NegativeResidualMask(SiteCorrection):
    """Silence neurons whose membrane after a ``steps``-step look-ahead is below ``-margin * theta``."""

    scope = "layer"

    def __init__(self, steps: int, margin: float):
        self.presim_steps, self.margin = int(steps), float(margin)

    def adjust(self, site, record, v0):
        keep = record.v_seq[-1] > -self.margin * record.threshold
        return Adjustment(mask=keep.to(v0.dtype))


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="per-step, per-channel mean-matching biases (T-specific) and an optional per-input "
                              "look-ahead mask (example third-party plugin)",
                      reference="snnbridge examples/plugin_correction", provides=("temporal_bias",),
                      requires=("threshold",), after=("threshold", "v0_base", "step_shift"), needs_data=True,
                      t_specific=True)


@hookimpl
def snnbridge_add_options():
    return [
        Option("alpha", float, 1.0, "fraction of the per-step mean error subtracted", check=lambda a: 0 < a <= 2,
               check_help="0 < alpha <= 2"),
        Option("samples", int, 256, "calibration images the means are taken over", check=lambda n: n >= 1,
               check_help="samples >= 1"),
        Option("lookahead", int, 0, "steps of the per-input look-ahead (0: no mask)", check=lambda n: n >= 0,
               check_help="lookahead >= 0"),
        Option("mask_margin", float, 1.0, "silence neurons ending the look-ahead below -mask_margin * theta",
               check=lambda m: math.isfinite(m) and m >= 0, check_help="mask_margin >= 0"),
    ]


def step_channel_means(seq: torch.Tensor) -> torch.Tensor:
    """Per step and channel means of a ``[T, B, C, ...]`` sequence: ``[T, C]``."""
    return torch.stack([channels.mean(step) for step in seq])


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    T = ctx.timesteps_for(options)
    batches = ctx.take(options["samples"], desc="meanmatch: calibration images")
    ann = ctx.collect(MeanObserver(channel_axis=1), batches=batches)  # {site: [C]} from the untouched ANN
    for name in ctx.sites:  # network order: each site sees its corrected predecessors
        with torch.no_grad(), snn.record(name, keep="output") as rec:
            for x in batches:
                snn.run(x, timesteps=T, until=name)
        err = step_channel_means(rec[name].counted("output")) - ann[name][None]
        spec = snn.sites[name].spec
        table = spec.step_table(T, err.shape[1]) - options["alpha"] * err.cpu()
        snn.set_spec(name, spec.replace(step_bias=table))
    if options["lookahead"]:
        for site in snn.sites.values():
            site.corrections.append(NegativeResidualMask(options["lookahead"], options["mask_margin"]))
    ctx.report["notes"].append(f"{NAME}: per-step biases for T = {T} on {sum(x.shape[0] for x in batches)} images"
                               + (f"; look-ahead mask over {options['lookahead']} steps" if options["lookahead"]
                                  else ""))
