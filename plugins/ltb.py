"""Training-free conversion with local threshold balancing (Bu, Li, Yu; CVPR 2025, arXiv:2409.03368v2).

Four parts (METHODS.md 4.1):

1. **Local threshold balancing** (threshold estimator; golden fact G8). Every site starts
   from ``theta = 0`` (per channel for conv, per feature for Linear; ``channelwise``). For
   each calibration batch (``iterations`` of them), at each site in network order, *before*
   clipping that batch::

       theta_c += eta * 2 * mean over (batch, positions) of relu(a - theta_c)
       output   = min(a, theta_c)            # downstream sites see clipped activations

   with ``a`` the site's ANN activation. This is gradient descent on ``sum (C(z; theta) -
   ReLU(z))^2`` with the clipping function ``C`` standing in for the SNN; ``eta = 1`` in the mean
   form is the official code's choice. The objective has no interior minimum (theta only
   grows toward the largest activations): the number of iterations is the knob that trades
   low-T accuracy (fewer) against high-T accuracy (more) - METHODS.md 4.7 trap 1. Channels that
   never activate keep theta = 0 in the official code (their neuron then emits zero-amplitude
   spikes); a threshold must be positive here, so they get ``eps`` (output <= eps per step,
   i.e. silent in practice) and the report counts them.
2. **Pre-neuron max pooling**: done by the core's graph preparation for every max-pool that
   directly follows an activation (the pool is moved in front of the neuron, so the balancing
   pass sees the pooled currents, as the official ``convert_ann_to_snn`` which swaps
   ``ReLU -> MaxPool`` into ``MaxPool -> neuron``). In the SNN the pool takes the max of
   per-step currents (trap 4).
3. **v(0) = theta/2** (``v0`` fraction; ``v0_base`` provider, from OPI).
4. **Delayed evaluation** (G17): the decoded output averages the last layer over steps
   ``t0 + 1 .. T`` with ``t0 = min(t0_est, T - 4)`` (``delay_margin``), set as the runtime's
   ``snn.decode_delay`` (``sweep`` applies it for every prefix length). The estimate follows the
   paper's formula (Alg. 1; trap 5: the official helper reads an attribute its neuron never
   sets): ``t0_est = sum over sites of (theta - v0)_i* / m_i*`` where ``m`` is the data-mean
   map of ``relu(z)`` (``z`` the site's input in the clipped forward pass, ``delay_batches``
   batches) and ``i*`` its largest element; rounded down as the official ``int(...)``.
   ``delay`` sets ``t0_est`` by hand; ``delayed_evaluation: false`` turns it off.

Official code: github.com/putshua/Inference-scale-ANN-SNN (``layers.py`` SpikingNeuron2d/4d,
``utils.py``). It fires on the strict ``>``; snnbridge's single rule is ``>=``.

LTB vs SpikingJelly 2.0 ``LocalThresholdBalancingRecipe`` (METHODS.md 4.5, installed code)
-----------------------------------------------------------------------------------------
Same update rule (theta0 = 0, ``theta += 2 * mean(relu(x - theta))`` per batch, clipped
activations downstream), BN folding, ReLU -> MaxPool reordering and v0 = theta/2. Differences:

* **Iterations**: SpikingJelly runs exactly the batches its dataloader yields, with eta fixed
  to 1; here ``iterations`` (cycling through the calibration batches) and ``eta``.
* **Dead channels**: SpikingJelly clamps theta >= 1e-6 after *every* update; here theta stays 0
  during balancing (official) and only the final threshold is clamped to ``eps``.
* **Per-channel thresholds**: SpikingJelly wraps ``HalfThresholdIFNode`` (theta = 1) in
  ``ChannelVoltageScaler(1/theta) ... ChannelVoltageScaler(theta)``; the division rounds, so
  spikes near the threshold can differ. Here each backend gets theta per channel directly.
* **Firing rule**: both use ``>=`` (SpikingJelly's Heaviside); the official code ``>``.
* **Sites**: SpikingJelly hooks only exact ``nn.ReLU`` modules (``F.relu``, ReLU6, clamp make its
  step-mode adapter raise) and reorders only ``nn.ReLU -> nn.MaxPool2d`` module pairs; here
  every activation site of the core (functional calls, ReLU6, clips, claimed modules) and any
  max-pool (1d/2d/3d, module or function) directly after one.
* **Granularity**: SpikingJelly is always channel-wise; here ``channelwise`` can be turned off.
* **Delayed evaluation**: the recipe has none. SpikingJelly's separate helper
  ``ann2snn.estimate_delay_start(model, loader, device, T, num_batches=1)`` sums per layer
  ``max_c(theta_c - v0_c) / max_c(mean_c relu(z))`` (channel means, numerator and denominator
  maximised independently), rounds *up*, and when ``T < t0 + 4`` returns ``max(T - 5, 0)``.
  Here: the paper's element-wise formula (one neuron i*), rounded down, ``min(t0, T - 4)``.
"""

from __future__ import annotations

import math
from itertools import count

import torch
from tqdm.auto import tqdm

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


def balance_step(theta: torch.Tensor, a: torch.Tensor, eta: float, channelwise: bool) -> torch.Tensor:
    """G8: ``theta + eta * 2 * mean(relu(a - theta))`` (per channel: over all dims but 1)."""
    a = a.detach().float()
    if channelwise:
        return theta + eta * 2 * channels.mean(torch.relu(a - channels.broadcast(theta, a)))
    return theta + eta * 2 * torch.relu(a - theta).mean()


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    cw, eta = options["channelwise"], options["eta"]
    theta: dict[str, torch.Tensor] = {}

    def balance(name, x_in, out):  # update this site's theta on the batch, then pass the clipped activation on
        if name not in theta:
            theta[name] = torch.zeros(out.shape[1] if cw else (), device=out.device)
        theta[name] = balance_step(theta[name], out, eta, cw)
        th = theta[name]
        return torch.minimum(out, channels.broadcast(th, out) if cw else th.to(out.dtype))

    K = options["iterations"]
    with torch.no_grad(), ctx.hooks(balance):
        if K is None:
            for x in ctx.batches(desc="ltb: threshold balancing"):
                ctx.ann(x)
        else:
            bar = tqdm(total=K, desc="ltb: threshold balancing", unit="batch", disable=not ctx.progress, leave=False)
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
    per_site = {}
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
