"""SRP: residual membrane potential masks (Hao et al., AAAI 2023). Code: github.com/hzc1208/ANN2SNN_SRP.

A per-input correction of a QCFS-converted SNN (``requires quantized_ann``) against the
largest unevenness error (the ANN outputs 0 while the SNN fires). Per input:

1. the whole network runs ``tau`` uncounted warm-up steps from the base ``v0`` (theta/2);
2. every neuron gets ``mask = 1`` if its residual potential ``v(tau) > mask_threshold * theta``
   (official: 1e-3), else 0;
3. every neuron restarts from the base ``v0`` (all sites at the same step) and the T counted
   steps run with the outputs multiplied by the masks - neurons with ``v(tau) <= 0`` stay
   silent, also those that fired twice and should keep one spike (that is the method).

This is the official ``mp_test`` procedure, attached as a network-scoped
:class:`snnbridge.SiteCorrection`: the runtime runs the shared warm-up and hands each site
its record. ``snn.steps_run`` reports ``tau + T`` (the abstract's "10 steps" are tau 8 + T 2).
With ``cos`` (``["qcfs", "cos", "srp"]``) one warm-up of ``max(rho, tau)`` steps serves both
and the counted run starts from COS's shifted ``v0`` with SRP's masks (README, "Stacking COS
and SRP").

Default ``tau: auto`` = the site's quantization levels L (``SiteInfo.levels``, QCFS's
``levels``), at most 8 - 4 where the activation does not say (the official CIFAR setting is
tau 4 on L = 4 ANNs). Measured on the suite's QCFS VGGs (2,000 held-out training images,
``benchmarks/option_sweep.py --network vgg-qcfs4 --group qcfs-presim``): on L = 4 tau 2 / 4 / 8
score 85.6 / 89.3 / 89.7 % at T = 2 and 90.3 / 91.9 / 92.6 % at T = 4 - 8 buys under a point
for four more steps per inference, 2 loses 1.6-3.7; on L = 8 tau 4 / 8 score 83.3 / 87.4 % at
T = 2 and 87.6 / 92.0 % at T = 4, so a fixed 4 loses four points there. ``["qcfs", "cos"]``
beats both on both networks.
"""

from __future__ import annotations

import math

import torch

from snnbridge import Adjustment, Option, PluginInfo, PresimRecord, SiteCorrection, hookimpl

NAME = "srp"

#: tau: auto on an activation without levels (the official CIFAR setting), and its cap
FALLBACK_TAU = 4
MAX_AUTO_TAU = 8


def residual_mask(v_tau: torch.Tensor, threshold, mask_threshold: float = 1e-3) -> torch.Tensor:
    """``1.0`` where the residual potential ``v(tau) > mask_threshold * theta``, else ``0.0``."""
    return (v_tau > mask_threshold * threshold).to(v_tau.dtype)


class ResidualPotentialMask(SiteCorrection):
    """SRP as a runtime correction: a per-sample, per-neuron output mask after a network warm-up.

    Leaves the initial potential of the counted run to the spec (and earlier corrections).
    """

    scope = "network"
    #: the mask compares v(tau) with a multiple of the threshold: exact after fold_scales (units of theta)
    threshold_relative = True

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
        Option("tau", int, "auto", "uncounted warm-up steps; auto = the sites' quantization levels L (QCFS's levels), "
               f"at most {MAX_AUTO_TAU}, {FALLBACK_TAU} where the activations have none (official: 4 CIFAR L = 4, "
               "8 ImageNet ResNet-34, 14 VGG-16)", keywords=("auto",), check=lambda n: n >= 1,
               check_help="tau >= 1"),
        Option("mask_threshold", float, 1e-3, "a neuron stays active when v(tau) > mask_threshold * theta",
               check=lambda v: math.isfinite(v), check_help="a finite number"),
    ]


def warmup_steps(site_infos, tau) -> int:
    """The network warm-up: ``tau``, or for ``"auto"`` the largest site levels L capped at 8 (4 without)."""
    if tau != "auto":
        return int(tau)
    levels = [info.levels for info in site_infos if info.levels is not None]
    return min(max(levels), MAX_AUTO_TAU) if levels else FALLBACK_TAU


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    tau = warmup_steps([ctx.sites[name] for name in snn.sites], options["tau"])
    for site in snn.sites.values():
        site.corrections.append(ResidualPotentialMask(tau, options["mask_threshold"]))
    how = ""
    if options["tau"] == "auto":
        how = (f" (auto: the sites' quantization levels, at most {MAX_AUTO_TAU})"
               if any(ctx.sites[n].levels is not None for n in snn.sites)
               else f" (auto: the activations give no quantization levels, so the official {FALLBACK_TAU})")
    ctx.report["notes"].append(
        f"{NAME}: residual-potential masks after a network warm-up of {tau} uncounted steps{how}; the model "
        f"simulates {snn.warmup} warm-up + T steps per input (snn.steps_run)")
