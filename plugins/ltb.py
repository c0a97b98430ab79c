"""Local threshold balancing (Bu, Li, Yu; CVPR 2025, arXiv:2409.03368).

Official code: github.com/putshua/Inference-scale-ANN-SNN.

Training-free conversion in four parts:

1. **Threshold** per channel (per feature for Linear), from ``theta = 0``; per calibration
   batch, at each site in network order and *before* clipping that batch::

       theta_c += eta * 2 * mean_{batch, positions} relu(a - theta_c);   output = min(a, theta_c)

   (gradient descent on ``sum (clip(z; theta) - relu(z))^2``; downstream sites see the clipped
   activations). The objective has no interior minimum: ``iterations`` is the knob that
   trades low-T accuracy (fewer, smaller thresholds) against high-T accuracy (more).
   Channels that never activate get ``eps``. The default ``iterations: auto`` balances once
   up to the largest of ``candidates`` (8 ... 256), keeping the thresholds after each, and
   keeps the candidate whose SNN agrees best with the ANN at the conversion's T on
   ``holdout_batches`` calibration batches held out from balancing (never test data; the
   choice and every candidate's agreement are in ``snn.report["ltb_iterations"]`` /
   ``["ltb_candidates"]``). Evidence, the CIFAR-10 example CNN (ANN 67.9 % on 1000 random
   test images, 512 random training images in 4 calibration batches;
   ``benchmarks/ltb_iterations.py``), accuracy at T = 4 / 8 / 16 / 32 / 64: one pass (SpikingJelly's
   recipe, the old default) 41.5 / 39.3 / 40.4 / 40.3 / 40.6; ``iterations: 128`` 54.6 /
   66.1 / 66.6 / 67.8 / 67.2; ``auto`` 60.8 / 65.2 / 68.2 / 68.4 / 68.1 (chose 16, 128,
   256, 256, 256), for 5-50 s of conversion on a busy 2-core machine. On the benchmark suite's
   VGG (ANN 86.21 %, all 10,000 test images, 2,048 calibration images; ``python -m benchmarks
   --networks vgg``) ``auto`` reaches 63.4 / 81.3 / 85.0 / 85.7 % at T = 4 / 8 / 16 / 32 where
   SpikingJelly's one-pass recipe stays at 54.4 / 53.1 / 52.0 / 51.6 %.
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

from snnbridge import DecodeWindow, InputError, Option, PluginInfo, channels, hookimpl

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
        Option("iterations", int, "auto", "balancing batches K (cycles through the calibration batches); null = one "
               "pass over them; auto = the candidate K whose SNN agrees best with the ANN at the conversion's T on "
               "held-out calibration batches. The real knob: fewer -> lower thresholds (low T), more -> higher "
               "(high T)", nullable=True, keywords=("auto",), check=lambda k: k is None or k >= 1,
               check_help="iterations >= 1"),
        Option("candidates", list, [8, 16, 32, 64, 128, 256], "iteration counts iterations: auto chooses from",
               check=lambda v: bool(v) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in v),
               check_help="a non-empty list of whole numbers >= 1"),
        Option("holdout_batches", int, 1, "calibration batches held out from balancing to score the candidates of "
               "iterations: auto (the first ones; with a single batch its last quarter of images)",
               check=lambda n: n >= 1, check_help="holdout_batches >= 1"),
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


def _balance(ctx, options, batches, marks: set[int]) -> tuple[dict[str, torch.Tensor], dict[int, dict]]:
    """Run the balancing updates over ``batches`` (an iterable of batches, or a callable returning one per pass,
    cycled up to the largest mark when given); return the final thresholds and a copy of them after each mark."""
    cw, eta = options["channelwise"], options["eta"]
    theta: dict[str, torch.Tensor] = {}

    def balance(name, x_in, out):  # update this site's theta on the batch, then pass the clipped activation on
        if name not in theta:
            theta[name] = torch.zeros(out.shape[1] if cw else (), device=out.device)
        theta[name] = balance_step(theta[name], out, eta, cw, ctx.all_mean)
        th = theta[name]
        return torch.minimum(out, channels.broadcast(th, out) if cw else th.to(out.dtype))

    snapshots: dict[int, dict] = {}
    K = max(marks) if marks else None
    with torch.no_grad(), ctx.hooks(balance):
        if K is None:
            for x in batches():
                ctx.ann(x)
        else:
            bar = ctx.progress_bar(desc="ltb: threshold balancing", total=K, unit="batch")
            done = 0
            for _ in count():
                for x in batches(K - done):
                    ctx.ann(x)
                    done += 1
                    bar.update(1)
                    if done in marks:
                        snapshots[done] = {n: t.clone() for n, t in theta.items()}
                if done >= K:
                    break
            bar.close()
    return theta, snapshots


def _finish(options, theta: dict[str, torch.Tensor], notes: list) -> dict:
    """Thresholds as the hook returns them: on the CPU, dead channels given ``eps`` (said in ``notes``)."""
    out = {}
    for name, th in theta.items():
        th = th.float().cpu()
        dead = th <= 0
        if dead.any():
            notes.append(f"{NAME}: {int(dead.sum())} channel(s) of site {name} never activated during balancing; "
                         f"threshold eps = {options['eps']:g} (silent)")
            th = torch.where(dead, torch.full_like(th, options["eps"]), th)
        out[name] = th if options["channelwise"] else float(th)
    return out


def _split(ctx, options) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(balancing batches, held-out batches) for iterations: auto."""
    batches = ctx.take(desc="ltb: calibration batches")
    hold = options["holdout_batches"]
    if len(batches) > hold:
        return batches[hold:], batches[:hold]
    x = batches[0]
    if x.shape[0] < 2:
        raise InputError("ltb: iterations: auto scores its candidates on held-out calibration images, but the "
                         "calibration data holds a single image; give more images or set iterations to a number.")
    cut = x.shape[0] - max(1, x.shape[0] // 4)
    ctx.report["notes"].append(f"{NAME}: one calibration batch: its last {x.shape[0] - cut} image(s) are held out to "
                               "choose iterations")
    return [x[:cut]], [x[cut:]]


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    K = options["iterations"]
    if K == "auto":
        fit, held = _split(ctx, options)
        marks = set(options["candidates"])
        _, snaps = _balance(ctx, options, lambda limit=None: fit[:limit] if limit is not None else fit, marks)
        notes: dict[int, list] = {k: [] for k in sorted(snaps)}  # said for the candidate that is kept
        cands = {k: _finish(options, snaps[k], notes[k]) for k in sorted(snaps)}
        ctx.plugin_data[NAME] = {"candidates": cands, "notes": notes, "held": held}
        largest = max(cands)
        ctx.report["notes"].append(f"{NAME}: iterations auto: balanced {largest} batch(es) over {len(fit)} "
                                   f"calibration batch(es), candidates {sorted(cands)} scored after conversion")
        return cands[largest]  # provisional: snnbridge_correct_error keeps the best candidate

    def stream(limit=None):
        return ctx.batches(desc="ltb: threshold balancing" if K is None else "ltb: pass over calibration data",
                           limit=limit)

    theta, _ = _balance(ctx, options, stream, set() if K is None else {K})
    ctx.report["notes"].append(f"{NAME}: {K if K is not None else 'one pass of'} balancing batch(es), "
                               f"eta = {options['eta']:g}")
    return _finish(options, theta, ctx.report["notes"])


def _v0(th, options):
    """The initial potential ``v0 * theta`` (a float, or a per-channel tensor of its own)."""
    return options["v0"] * th if isinstance(th, float) else options["v0"] * th.clone()


@hookimpl
def snnbridge_configure_neuron(site, spec, ctx, options):
    return spec.replace(v0=_v0(spec.threshold, options))


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


def _delay_window(ctx, snn, options) -> tuple[DecodeWindow, int, str]:
    """The decoding window delayed evaluation sets for the SNN's current specs, its t0 and how it was found."""
    if options["delay"] is not None:
        t0, how = int(options["delay"]), "set by hand"
    else:
        est, per_site = estimate_delay(ctx, snn.specs, options["delay_batches"])
        t0 = int(math.floor(est)) if math.isfinite(est) else 0
        how = "estimated " + ", ".join(f"{k}: {v:.2f}" for k, v in per_site.items())
    return DecodeWindow(delay=t0, keep=options["delay_margin"]), t0, how


@torch.no_grad()
def _choose_iterations(snn, ctx, options) -> None:
    """iterations: auto - keep the candidate whose SNN agrees best with the ANN on the held-out batches at T."""
    data = ctx.plugin_data.pop(NAME)
    held, T = data["held"], ctx.timesteps
    targets = [ctx.ann(x) for x in held]
    base, window = snn.specs, snn.decode_window
    scores = {}
    for k, thresholds in data["candidates"].items():
        for name, th in thresholds.items():
            snn.set_spec(name, base[name].replace(threshold=th, v0=_v0(th, options)))
        snn.decode_window = _delay_window(ctx, snn, options)[0] if options["delayed_evaluation"] else window
        agree, err, n = 0.0, 0.0, 0
        for x, a in zip(held, targets):
            out = snn(x, timesteps=T)
            agree += float((out.argmax(-1) == a.argmax(-1)).sum())
            err += float(((out - a) ** 2).sum())
            n += x.shape[0]
        agree, err, n = (float(v) for v in ctx.all_sum(torch.tensor([agree, err, float(n)], dtype=torch.float64)))
        scores[k] = (agree / n, err / n)
    best = max(scores, key=lambda k: (scores[k][0], -scores[k][1], -k))  # agreement, then output MSE, then fewer
    for name, th in data["candidates"][best].items():
        snn.set_spec(name, base[name].replace(threshold=th, v0=_v0(th, options)))
    snn.decode_window = window
    ctx.report["notes"].extend(data["notes"][best])
    snn.report["ltb_iterations"] = best
    snn.report["ltb_candidates"] = {str(k): {"agreement": round(a, 4), "mse": round(e, 6)}
                                    for k, (a, e) in scores.items()}
    listing = ", ".join(f"{k}: {a:.1%}" for k, (a, _) in scores.items())
    ctx.report["notes"].append(f"{NAME}: iterations auto chose {best} for T = {T} by agreement with the ANN on "
                               f"{sum(x.shape[0] for x in held)} held-out calibration image(s) ({listing})")


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    if options["iterations"] == "auto":
        _choose_iterations(snn, ctx, options)
    if not options["delayed_evaluation"]:
        return
    window, t0, how = _delay_window(ctx, snn, options)
    if snn.decode_window != DecodeWindow():
        ctx.report["notes"].append(f"{NAME}: replaces the decoding window set by an earlier plugin")
    snn.decode_window = window
    ctx.report["notes"].append(f"{NAME}: delayed evaluation, t0_est = {t0} ({how}); decoding averages steps "
                               f"min(t0_est, T - {options['delay_margin']}) + 1 .. T")
    snn.report["ltb_t0_est"] = t0
