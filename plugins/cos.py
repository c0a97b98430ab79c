"""COS: calibrating offset spikes (Hao et al., ICLR 2023; METHODS.md section 7).

A per-input correction of a QCFS-converted SNN, decided at inference time from a short
pre-simulation; no data, no training. For every neuron of every site and every sample:

1. pre-simulate the first ``rho`` steps (default 4) of the site's input from the base
   ``v0`` (``theta/2`` with ``qcfs``) and record the spike count ``n``, the potential
   ``v(rho)``, the pre-reset potentials ``m(t)`` of the spiking steps and the potentials
   ``v(t)`` of the silent steps;
2. over-firing (``v(rho) < 0`` and ``n >= 1``): ``shift = m_min - 0.999 theta`` if that
   exceeds ``theta``, else ``theta``; ``v0 <- v0 - shift`` (one spike fewer);
3. else under-firing (``v(rho) >= theta``): ``shift = 1.001 theta - v_max`` if that exceeds
   ``theta``, else ``theta``; ``v0 <- v0 + shift`` (one spike more). A neuron that fired at
   *every* pre-simulation step has no silent step: the official code then shifts by
   ~1001 theta (it keeps firing at every step); this plugin clamps the shift to ``theta``
   (METHODS.md 7.6, trap 4), the offset-spike distance of the method;
4. otherwise ``v0`` is unchanged;
5. ``rounds > 1`` repeats 1-4 on the same inputs from the new ``v0`` (the paper's
   iterative property: each round can remove or add one more offset spike; the official
   code runs one round, the default here). From the second round on, the residual test
   reads ``v(rho) - delta`` with ``delta = v0 - v0_base`` (the shift applied so far): since
   ``v(rho) = v0 + sum(x) - theta n``, the offset spike is 0 exactly when the residual
   *relative to the shifted start* lies in ``[0, theta)``; in round 1 ``delta = 0`` and this
   is the official test (golden fact G6: a second round moves ``(0.9, 0.9, -0.8, -0.8)``
   on to ``v0 = -1.5``, while a neuron that reached its target stays put);
6. the counted run starts again at step 1 from the calibrated ``v0``.

This is the official code's rule (``MPLayer`` in hzc1208/ANN2SNN_COS), in units of the
threshold. It is attached as a :class:`~snnbridge.runtime.SiteCorrection` with
``scope = "layer"``: each site pre-simulates the first ``rho`` steps of its *own* counted
input sequence (which already comes from the calibrated upstream sites), then reruns from
the start - identical to the official layer-by-layer evaluation. Latency accounting: the
model simulates ``rho + T`` steps per input (``snn.steps_run``); ``T >= rho`` is needed for
``snn(x, timesteps=T)``, and shorter T are read from ``snn.sweep`` of a longer run, exactly
as the official code reports T = 1, 2.

Stacked with ``srp`` (``["qcfs", "cos", "srp"]``): any network-scoped correction makes the
runtime run one shared, uncounted network warm-up; COS then decides its shift from that
warm-up's record at each site (all sites pre-simulated together from the base ``v0``,
upstream *un*calibrated), and the T counted steps start from the shifted ``v0`` with SRP's
masks applied. See README.md, "Stacking COS and SRP".

Requires ``quantized_ann`` (a QCFS network, ``qcfs`` earlier in the recipe): the residual
potential test reads an offset spike only against the QCFS target with ``v0 = theta/2``.
"""

from __future__ import annotations

import torch

from snnbridge import Adjustment, Option, PluginInfo, PresimRecord, SiteCorrection, hookimpl

NAME = "cos"

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
        Option("rho", int, 4, "pre-simulation steps per site (official: 4 CIFAR, 8 ImageNet)",
               check=lambda n: n >= 1, check_help="rho >= 1"),
        Option("rounds", int, 1, "calibration rounds (iterative property; official code: 1)",
               check=lambda n: n >= 1, check_help="rounds >= 1"),
    ]


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    for site in snn.sites.values():
        site.corrections.append(OffsetSpikeCalibration(options["rho"], options["rounds"]))
    ctx.report["notes"].append(
        f"{NAME}: per-input offset-spike calibration, rho = {options['rho']} pre-simulation steps, "
        f"{options['rounds']} round(s); each run simulates pre-simulation + T steps (snn.steps_run)")
