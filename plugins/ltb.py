"""Local threshold balancing (Bu, Li, Yu; CVPR 2025, arXiv:2409.03368).

Official code: github.com/putshua/Inference-scale-ANN-SNN.

Training-free conversion in four parts:

1. **Threshold** per channel (per feature for Linear), from ``theta = 0``; per calibration
   batch, at each site in network order and *before* clipping that batch::

       theta_c += eta * 2 * mean_{batch, positions} relu(a - theta_c);   output = min(a, theta_c)

   (gradient descent on ``sum (clip(z; theta) - relu(z))^2``; downstream sites see the clipped
   activations). The objective has no interior minimum: ``iterations`` is the knob that
   trades low-T accuracy (fewer, smaller thresholds) against high-T accuracy (more).
   Channels that never activate get ``eps``.
2. **Pre-neuron max pooling**: the core moves a max-pool that follows an activation in
   front of the neuron.
3. **v0 = theta/2** (``v0``; provides ``v0_base``).
4. **Delayed evaluation**: the output averages steps ``t0 + 1 .. T`` with
   ``t0 = min(t0_est, T - delay_margin)`` (``snn.decode_window``); ``t0_est = sum_sites
   (theta - v0)_i* / m_i*`` with ``m`` the data-mean map of ``relu(z)`` in the clipped forward
   pass and ``i*`` its largest element, rounded down (``delay`` sets it by hand).

Where the official code differs: it fires on ``>`` (here ``>=``); its delay helper reads an
attribute its neuron never sets, so the estimate follows the paper's formula. SpikingJelly
2.0's ``LocalThresholdBalancingRecipe`` runs one pass over its loader with eta = 1, clamps
dead channels after every update and scales per-channel thresholds through voltage
scalers; the comparison is in docs/methods.md.
"""

from __future__ import annotations

import math
from itertools import count

import torch

from snnbridge import DecodeWindow, Option, PluginInfo, channels, hookimpl

NAME = "ltb"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(
        summary="training-free local threshold balancing (per channel), v0 = theta/2, delayed evaluation",
        reference="Bu, Li, Yu, Inference-Scale Complexity in ANN-SNN Conversion for High-Performance and Low-Power "
                  "Applications, CVPR 2025 (arXiv:2409.03368)",
        provides=("threshold", "v0_base"), needs_data=True)


@hookimpl
def snnbridge_add_options():
    return [
        Option("iterations", int, None, "balancing batches K (cycles through the calibration batches); unset = one "
               "pass over them. The real knob: fewer -> lower thresholds (low T), more -> higher (high T)",
               nullable=True, check=lambda k: k is None or k >= 1, check_help="iterations >= 1"),
        Option("eta", float, 1.0, "learning rate of the mean-form update (official code: 1)", check=lambda e: e > 0,
               check_help="eta > 0"),
        Option("channelwise", bool, True, "one threshold per channel (per feature for Linear), as the paper"),
        Option("v0", float, 0.5, "initial membrane potential as a fraction of theta", check=lambda f: 0 <= f <= 1,
               check_help="0 <= v0 <= 1"),
        Option("eps", float, 1e-6, "threshold given to channels that never activated", check=lambda e: e > 0,
               check_help="eps > 0"),
        Option("delayed_evaluation", bool, True, "decode from step t0 + 1 (t0 = min(t0_est, T - delay_margin))"),
        Option("delay", int, None, "t0_est set by hand instead of estimated", nullable=True,
               check=lambda d: d is None or d >= 0, check_help="delay >= 0"),
        Option("delay_margin", int, 4, "steps always kept for decoding (the paper's T - 4)", check=lambda m: m >= 1,
               check_help="delay_margin >= 1"),
        Option("delay_batches", int, 1, "calibration batches for the t0 estimate (official helper: 1)",
               check=lambda n: n >= 1, check_help="delay_batches >= 1"),
    ]


def balance_step(theta: torch.Tensor, a: torch.Tensor, eta: float, channelwise: bool,
                 mean_over_ranks=None) -> torch.Tensor:
    """One balancing update: ``theta + eta * 2 * mean(relu(a - theta))`` (per channel: over all dims but 1).

    ``mean_over_ranks(mean, count)``: in a distributed conversion (``ctx.all_mean``), the mean
    becomes that of the union of the ranks' batches, so every rank takes the same step (the
    official code averages the update across its GPUs).
    """
    a = a.detach().float()
    if channelwise:
        g = channels.mean(torch.relu(a - channels.broadcast(theta, a)))
    else:
        g = torch.relu(a - theta).mean()
    if mean_over_ranks is not None:
        g = mean_over_ranks(g, a.numel() // max(1, g.numel()))
    return theta + eta * 2 * g


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    cw, eta = options["channelwise"], options["eta"]
    theta: dict[str, torch.Tensor] = {}

    def balance(name, x_in, out):  # update this site's theta on the batch, then pass the clipped activation on
        if name not in theta:
            theta[name] = torch.zeros(out.shape[1] if cw else (), device=out.device)
        theta[name] = balance_step(theta[name], out, eta, cw, ctx.all_mean)
        th = theta[name]
        return torch.minimum(out, channels.broadcast(th, out) if cw else th.to(out.dtype))

    K = options["iterations"]
    with torch.no_grad(), ctx.hooks(balance):
        if K is None:
            for x in ctx.batches(desc="ltb: threshold balancing"):
                ctx.ann(x)
        else:
            bar = ctx.progress_bar(desc="ltb: threshold balancing", total=K, unit="batch")
            done = 0
            for _ in count():
                for x in ctx.batches(desc="ltb: pass over calibration data", limit=K - done):
                    ctx.ann(x)
                    done += 1
                    bar.update(1)
                if done >= K:
                    break
            bar.close()
    out = {}
    for name, th in theta.items():
        th = th.float().cpu()
        dead = th <= 0
        if dead.any():
            ctx.report["notes"].append(f"{NAME}: {int(dead.sum())} channel(s) of site {name} never activated during "
                                       f"balancing; threshold eps = {options['eps']:g} (silent)")
            th = torch.where(dead, torch.full_like(th, options["eps"]), th)
        out[name] = th if cw else float(th)
    ctx.report["notes"].append(f"{NAME}: {K if K is not None else 'one pass of'} balancing batch(es), eta = {eta:g}")
    return out


@hookimpl
def snnbridge_configure_neuron(site, spec, ctx, options):
    th = spec.threshold
    return spec.replace(v0=options["v0"] * th if isinstance(th, float) else options["v0"] * th.clone())


@torch.no_grad()
def estimate_delay(ctx, specs, batches: int) -> tuple[float, dict[str, float]]:
    """The paper's t0 estimate: ``sum_l (theta - v0)_i* / m_i*`` (see the module docstring)."""
    sums: dict[str, torch.Tensor] = {}
    n = 0

    def clipped(name, x_in, out):  # the data mean of relu(z) at each site, in the clipped forward pass
        z = torch.relu(x_in.detach().float()).sum(0)
        sums[name] = z if name not in sums else sums[name] + z
        th = specs[name].threshold
        return out.clamp(max=th) if isinstance(th, float) else torch.minimum(out, channels.broadcast(th, out))

    with ctx.hooks(clipped):
        for x in ctx.batches(desc="ltb: delay estimate", limit=batches):
            ctx.ann(x)
            n += x.shape[0]
    n = int(ctx.all_sum(torch.tensor(n)))  # a distributed conversion: the means over every rank's images
    per_site = {}
    for name in sums:
        sums[name] = ctx.all_sum(sums[name])
    for name, s in sums.items():
        m = (s / max(1, n)).flatten()
        i = int(torch.argmax(m))
        if float(m[i]) <= 0:
            per_site[name] = 0.0
            continue
        spec = specs[name]
        like = s.unsqueeze(0)
        th = spec.threshold
        th_map = torch.full_like(like, th) if isinstance(th, float) else spec.threshold_tensor(like).expand_as(like)
        charge = (th_map - spec.v0_tensor(like)).flatten()[i]
        per_site[name] = max(0.0, float(charge)) / float(m[i])
    return sum(per_site.values()), per_site


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    if not options["delayed_evaluation"]:
        return
    if options["delay"] is not None:
        t0 = int(options["delay"])
        how = "set by hand"
    else:
        est, per_site = estimate_delay(ctx, snn.specs, options["delay_batches"])
        t0 = int(math.floor(est)) if math.isfinite(est) else 0
        how = "estimated " + ", ".join(f"{k}: {v:.2f}" for k, v in per_site.items())
    if snn.decode_window != DecodeWindow():
        ctx.report["notes"].append(f"{NAME}: replaces the decoding window set by an earlier plugin")
    snn.decode_window = DecodeWindow(delay=t0, keep=options["delay_margin"])
    ctx.report["notes"].append(f"{NAME}: delayed evaluation, t0_est = {t0} ({how}); decoding averages steps "
                               f"min(t0_est, T - {options['delay_margin']}) + 1 .. T")
    snn.report["ltb_t0_est"] = t0
