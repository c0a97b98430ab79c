"""SRP: residual membrane potential masks (Hao et al., AAAI 2023; METHODS.md section 8).

A per-input correction of a QCFS-converted SNN against the largest unevenness error (the
ANN outputs 0 while the SNN fires). For every input:

1. the whole network runs ``tau`` uncounted steps (default 4) from the base ``v0``
   (``theta/2`` with ``qcfs``), an ordinary SNN run whose outputs propagate to later layers
   but are not decoded;
2. after step ``tau`` every neuron gets ``mask = 1`` if its residual potential
   ``v(tau) > mask_threshold * theta`` (default ``1e-3``, the official value) else ``0``;
3. every neuron restarts from the base ``v0`` (all sites at the same global step) and the
   ``T`` counted steps run with each neuron's output multiplied by its mask, so neurons whose
   residual potential was ``<= 0`` stay silent for the whole run - also those that fired
   twice and should keep one spike (that is the method, METHODS.md 8.6).

This is the official code's ``mp_test`` procedure (hzc1208/ANN2SNN_SRP). It is attached as a
network-scoped :class:`~snnbridge.runtime.SiteCorrection`: the runtime runs the shared warm-up
and hands each site its record; the prediction averages only the T counted steps, and
``snn.steps_run`` reports ``tau + T`` (the paper's abstract counts the sum: "10 steps" =
tau 8 + T 2).

Stacked with ``cos`` (``["qcfs", "cos", "srp"]``): one warm-up of ``max(rho, tau)`` steps
serves both; SRP's mask comes from ``v(tau)`` of that warm-up, COS's ``v0`` shift from its
first ``rho`` steps, and the counted run starts from COS's shifted ``v0`` (SRP's restart
value is whatever the earlier corrections proposed, the base ``v0`` when alone) with SRP's
masks. See README.md, "Stacking COS and SRP".

Requires ``quantized_ann`` (``qcfs`` earlier in the recipe).
"""

from __future__ import annotations

import math

import torch

from snnbridge import Adjustment, Option, PluginInfo, PresimRecord, SiteCorrection, hookimpl

NAME = "srp"


def residual_mask(v_tau: torch.Tensor, threshold, mask_threshold: float = 1e-3) -> torch.Tensor:
    """``1.0`` where the residual potential ``v(tau) > mask_threshold * theta``, else ``0.0``."""
    return (v_tau > mask_threshold * threshold).to(v_tau.dtype)


class ResidualPotentialMask(SiteCorrection):
    """SRP as a runtime correction: a per-sample, per-neuron output mask after a network warm-up.

    Leaves the initial potential of the counted run to the spec (and earlier corrections).
    """

    scope = "network"

    def __init__(self, tau: int = 4, mask_threshold: float = 1e-3):
        self.presim_steps = int(tau)
        self.mask_threshold = float(mask_threshold)

    def adjust(self, site, record: PresimRecord, v0: torch.Tensor) -> Adjustment:
        v_tau = record.v_seq[self.presim_steps - 1]
        return Adjustment(mask=residual_mask(v_tau, record.threshold, self.mask_threshold))


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="per-input output masks from the residual potential after a tau-step network warm-up",
                      reference="Hao et al., Reducing ANN-SNN Conversion Error through Residual Membrane Potential, "
                                "AAAI 2023",
                      provides=("residual_mask",), requires=("quantized_ann",))


@hookimpl
def snnbridge_add_options():
    return [
        Option("tau", int, 4, "uncounted warm-up steps (official: 4 CIFAR, 8 ImageNet ResNet-34, 14 VGG-16)",
               check=lambda n: n >= 1, check_help="tau >= 1"),
        Option("mask_threshold", float, 1e-3, "a neuron stays active when v(tau) > mask_threshold * theta",
               check=lambda v: math.isfinite(v), check_help="a finite number"),
    ]


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    for site in snn.sites.values():
        site.corrections.append(ResidualPotentialMask(options["tau"], options["mask_threshold"]))
    ctx.report["notes"].append(
        f"{NAME}: residual-potential masks after a network warm-up of {options['tau']} uncounted steps; the model "
        f"simulates {snn.warmup} warm-up + T steps per input (snn.steps_run)")
