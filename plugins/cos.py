"""COS: calibrating offset spikes (Hao et al., ICLR 2023). Code: github.com/hzc1208/ANN2SNN_COS.

A per-input correction of a QCFS-converted SNN (``requires quantized_ann``), decided at
inference from a short pre-simulation; no data. Per sample, neuron and site, in units of
theta, after pre-simulating the first ``rho`` steps of the site's own input from the base
``v0`` (theta/2):

* over-firing (``v(rho) < 0`` and ``n >= 1``): ``v0 -= max(m_min - 0.999, 1)`` with ``m_min``
  the smallest pre-reset potential of a spiking step (one spike fewer);
* under-firing (``v(rho) >= 1``): ``v0 += max(1.001 - v_max, 1)`` with ``v_max`` the largest
  potential of a silent step (one spike more);
* otherwise unchanged; then the counted run restarts at step 1 from the new ``v0``.

``rounds > 1`` repeats the test from the shifted start (the paper's iterative property; from
round 2 the residual is read relative to the shift already applied). Attached as a
layer-scoped :class:`snnbridge.SiteCorrection`: each site looks ahead on its own counted
input, which already comes from calibrated upstream sites - identical to the official
layer-by-layer evaluation. The model simulates ``rho + T`` steps (``snn.steps_run``);
``T < rho`` runs ``rho`` counted steps and returns the first T (``snn.padded_steps``), step T
of a longer run as the official code reports it.

Default ``rho: auto`` = the site's quantization levels L (``SiteInfo.levels``, QCFS's
``levels``), at most 8 - 4 where the activation does not say. Why: the official CIFAR setting
is rho 4 on L = 4 ANNs and ImageNet's rho 8 on L = 16; a spike count needs about L steps to
say which of L levels a neuron is on, and the suite's two QCFS VGGs agree
(``python benchmarks/option_sweep.py --network vgg-qcfs4 --group qcfs-presim --timesteps 1,2,4``,
2,000 held-out training images). L = 4 (ANN 92.90 % there): rho 2 / 4 / 8 score 84.4 / 85.2 /
84.7 % at T = 1, 86.9 / 90.8 / 91.3 % at T = 2 and 90.1 / 93.0 / 92.8 % at T = 4 (agreement
with the ANN 99.85 % at rho = T = L): 2 is too short, 8 costs four more steps for no gain.
L = 8 (ANN 94.25 %): rho 4 / 8 score 89.0 / 89.8 % at T = 2 and 90.9 / 92.9 % at T = 4 - a
fixed 4 loses up to two points there.

Where the official code differs: a neuron that fired at every pre-simulation step has no
silent step and is shifted by ~1001 theta there; here the shift is clamped to theta. The
official code runs one round. Stacked with ``srp``, COS decides from the shared network
warm-up (README, "Stacking COS and SRP").
"""

from __future__ import annotations

import torch

from snnbridge import Adjustment, Option, PluginInfo, PresimRecord, SiteCorrection, hookimpl

NAME = "cos"

#: rho: auto on an activation without levels (the official CIFAR setting), and its cap (official ImageNet)
FALLBACK_RHO = 4
MAX_AUTO_RHO = 8

#: the official code's margins (units of theta)
OVER_MARGIN = 0.999
UNDER_MARGIN = 1.001


def offset_shift(spikes: torch.Tensor, v_seq: torch.Tensor, threshold, delta=0.0) -> torch.Tensor:
    """Signed change of ``v0`` decided from one pre-simulation (``[P, B, ...]`` spikes and potentials).

    Negative for over-firing neurons, positive for under-firing ones, 0 otherwise. ``delta`` is
    the shift already applied to the start of this pre-simulation (0 in the first round).
    """
    th = torch.zeros_like(v_seq[-1]) + threshold
    m = v_seq + spikes * threshold  # pre-reset potentials
    fired = spikes > 0
    n = spikes.sum(0)
    v_end = v_seq[-1] - delta
    over = (v_end < 0) & (n >= 1)
    under = ~over & (v_end >= th)
    big = torch.finfo(v_seq.dtype).max
    m_min = torch.where(fired, m, torch.full_like(m, big)).amin(0)
    v_max = torch.where(fired, torch.full_like(v_seq, -big), v_seq).amax(0)
    has_silent = (~fired).any(0)
    s_over = m_min - OVER_MARGIN * th
    s_over = torch.where(s_over > th, s_over, th)
    s_under = torch.where(has_silent, UNDER_MARGIN * th - v_max, th)
    s_under = torch.where(s_under > th, s_under, th)
    zero = torch.zeros_like(th)
    return torch.where(over, -s_over, torch.where(under, s_under, zero))


class OffsetSpikeCalibration(SiteCorrection):
    """COS as a runtime correction: per-sample, per-neuron shift of the initial potential.

    ``rho``: pre-simulation steps; ``rounds``: calibration rounds; ``scope``: ``"layer"``
    (the method's own look-ahead) - the runtime switches to its shared network warm-up when
    another correction of the model is network-scoped. When the record is longer than
    ``rho`` (a shared warm-up sized for another correction), its first ``rho`` steps are used.
    """

    scope = "layer"
    #: every term of the shift is a multiple of the threshold: exact after fold_scales (units of theta)
    threshold_relative = True

    def __init__(self, rho: int = 4, rounds: int = 1):
        self.presim_steps = int(rho)
        self.rounds = int(rounds)

    def adjust(self, site, record: PresimRecord, v0: torch.Tensor) -> Adjustment:
        P = self.presim_steps
        drive, spikes, v_seq = record.drive[:P], record.spikes[:P], record.v_seq[:P]
        base = record.v0
        if not torch.equal(base, v0):  # an earlier correction moved the start: pre-simulate from it
            res = site.neuron.simulate(drive, v0.clone(), return_v=True)
            spikes, v_seq, base = res.spikes, res.v_seq, v0
        for r in range(self.rounds):
            if r > 0:
                res = site.neuron.simulate(drive, v0.clone(), return_v=True)
                spikes, v_seq = res.spikes, res.v_seq
            v0 = v0 + offset_shift(spikes, v_seq, record.threshold, v0 - base)
        return Adjustment(v0=v0)


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="per-input offset-spike calibration of v0 after a rho-step pre-simulation",
                      reference="Hao et al., Bridging the Gap between ANNs and SNNs by Calibrating Offset Spikes, "
                                "ICLR 2023",
                      provides=("offset_calibration",), requires=("quantized_ann",))


@hookimpl
def snnbridge_add_options():
    return [
        Option("rho", int, "auto", "pre-simulation steps per site; auto = the site's quantization levels L (QCFS's "
               f"levels), at most {MAX_AUTO_RHO}, {FALLBACK_RHO} where the activation has none (official: 4 CIFAR "
               "L = 4, 8 ImageNet L = 16)", keywords=("auto",), check=lambda n: n >= 1, check_help="rho >= 1"),
        Option("rounds", int, 1, "calibration rounds (iterative property; official code: 1)",
               check=lambda n: n >= 1, check_help="rounds >= 1"),
    ]


def presim_steps(site_info, rho) -> int:
    """The pre-simulation length of one site: ``rho``, or for ``"auto"`` its levels L capped at 8 (4 without)."""
    if rho != "auto":
        return int(rho)
    levels = site_info.levels
    return FALLBACK_RHO if levels is None else min(levels, MAX_AUTO_RHO)


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    chosen = {}
    for name, site in snn.sites.items():
        chosen[name] = presim_steps(ctx.sites[name], options["rho"])
        site.corrections.append(OffsetSpikeCalibration(chosen[name], options["rounds"]))
    rhos = sorted(set(chosen.values()))
    how = ""
    if options["rho"] == "auto":
        levels = sorted({ctx.sites[n].levels for n in chosen} - {None})
        how = (f" (auto: the sites' quantization levels L = {', '.join(map(str, levels))}, at most {MAX_AUTO_RHO})"
               if levels else f" (auto: the activations give no quantization levels, so the official {FALLBACK_RHO})")
    ctx.report["notes"].append(
        f"{NAME}: per-input offset-spike calibration, rho = {', '.join(map(str, rhos))} pre-simulation steps{how}, "
        f"{options['rounds']} round(s); each run simulates pre-simulation + T steps (snn.steps_run)")
