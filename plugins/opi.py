"""OPI: optimized potential initialization (Bu, Ding, Yu, Huang; AAAI 2022, arXiv:2202.01440).

Every neuron starts from ``v0 = fraction * theta`` (default ``fraction = 0.5``), on top of any
threshold source (``["maxnorm", "opi"]``, ``["robustnorm", "opi"]``, ``["qcfs", "opi"]``; a
per-channel threshold gives a per-channel ``v0``). With ``v0 = theta/2`` the SNN layer
computes ``(theta/T) * clip(floor((z T + theta/2)/theta), 0, T)``, i.e. *rounding* instead of
flooring: the expected layer error vanishes and the expected squared error is minimal
(``Delta^2/12`` instead of ``Delta^2/3``, ``Delta = theta/T``). Other
fractions are ablations (``fraction = 0`` is the plain floor; on a QCFS network it is the
phi = 0 ablation of the SNN side).

OPI provides ``v0_base`` (the base initial potential): a second base writer in the same
recipe is refused, and so is ``clipshift``'s per-step half-step shift (``step_shift``),
which would shift the charge twice. ``qcfs`` only supplies its own
``theta/2`` when no recipe plugin provides ``v0_base``, so ``["qcfs", "opi"]`` lets this
plugin decide. The paper's optional clip activation with a trainable bound is not part of
this plugin (``qcfs`` with its trainable lambda covers training-aware clipping). No official
repository exists.
"""

from __future__ import annotations

import math

from snnbridge import Option, PluginInfo, hookimpl

NAME = "opi"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="initial membrane potential v0 = fraction * theta (default theta/2)",
                      reference="Bu et al., Optimized Potential Initialization for Low-latency Spiking Neural "
                                "Networks, "
                                "AAAI 2022",
                      provides=("v0_base",), conflicts=("step_shift",))


@hookimpl
def snnbridge_add_options():
    return [Option("fraction", float, 0.5, "v0 as a fraction of the threshold (0.5 = optimal; 0 = floor ablation)",
                   check=lambda v: math.isfinite(v) and 0.0 <= v <= 1.0, check_help="0 <= fraction <= 1")]


@hookimpl
def snnbridge_configure_neuron(site, spec, options):
    return spec.replace(v0=options["fraction"] * spec.threshold)
