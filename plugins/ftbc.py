"""FTBC: forward temporal bias correction (Wu et al., ECCV 2024). Code: github.com/shizukanaskytree/FTBC.

A per-site, per-step, per-channel bias ``b[t, c]`` subtracted from the membrane at step t::

    m(t) = v(t-1) + x(t) [+ the base method's terms, e.g. +theta/(2T)] - b[t, c]

learned forward-only against the untouched ANN. For each outer iteration (``iterations``),
calibration batch (``batches``) and site in network order, stepping t = 1..T::

    e_c   = mean_{batch, positions} theta s_c(t) - mean a_c     (a: the ANN activation)
    b[t] += alpha e                                             (positive error: fewer spikes)
    re-fire step t with the new bias and carry the corrected membrane on

The table is ``NeuronSpec.step_bias`` (``[T, C]``, added, so it holds ``-b``) on top of any
threshold source and base initial potential. T-specific. Under a longer look-ahead (``cos``
with ``rho > T``) the run simulates ``rho`` steps and returns the first T; every simulated
step gets a row (``snn.padded_steps(T)``).

Where the official code differs: its SNN-Calibration variant steps the whole network and
re-fires one layer per step; here one simulation per batch hands each site its input sequence
(driven by the sites before it, already corrected) and the site alone is re-simulated step by
step before it fires (the QCFS variant's layer-local loop, identical result);
it fires on ``>`` there, ``>=`` here. Defaults: that variant's command line (alpha 0.5,
10 batches) with 2 outer iterations instead of 5 - on the CIFAR-10 example CNN (2,000 test
images, T = 4, 8, 16) 10 x 2 is within 1.1 points of 10 x 5 after ``robustnorm`` and within
0.4 after ``ltb`` (128 iterations), for 2.5x less time; on the benchmark VGG (ANN 92.90 % on
2,000 held-out training images, T = 8, ``python benchmarks/option_sweep.py --group ftbc``)
10 x 2 / 10 x 5 / 16 x 2 score 91.00 / 90.70 / 90.75 % after channel-wise ``robustnorm``
and 90.40 / 90.65 % (10 x 2 / 10 x 5) after ``ltb``: more iterations or batches buy
nothing there either, at 2.0x / 1.4x the time. Same on the 19-site ResNet-20 at T = 32
(ANN 92.80 % on those images, ``--network resnet20 --timesteps 32``): 92.50 / 92.45 / 92.35 %
after channel-wise ``robustnorm``. The official script keeps the iteration that scores best on the
*test* set; ``select: true`` picks the iteration count on held-out *calibration* batches by
the output MSE against the ANN instead. More in docs/methods.md.
"""

from __future__ import annotations

import torch

from snnbridge import InputError, Option, PluginInfo, channels, hookimpl

NAME = "ftbc"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(
        summary="per-step, per-channel temporal bias b[t, c] learned forward-only against the untouched ANN "
                "(T-specific)",
        reference="Wu et al., FTBC: Forward Temporal Bias Correction for Optimizing ANN-SNN Conversion, ECCV 2024",
        provides=("temporal_bias",), requires=("threshold",), after=("threshold", "v0_base", "step_shift"),
        needs_data=True, t_specific=True)


@hookimpl
def snnbridge_add_options():
    return [
        Option("alpha", float, 0.5, "step size of the bias update b[t] += alpha * e", check=lambda a: a > 0,
               check_help="alpha > 0"),
        Option("batches", int, 10, "calibration batches per outer iteration", check=lambda n: n >= 1,
               check_help="batches >= 1"),
        Option("iterations", int, 2, "outer iterations over the calibration batches", check=lambda n: n >= 0,
               check_help="iterations >= 0"),
        Option("select", bool, False, "choose the number of iterations (0..iterations) on held-out calibration "
               "(training) batches by the MSE between SNN and ANN outputs - never on test data"),
        Option("holdout_batches", int, 1, "calibration batches held out for 'select' (taken after the batches used "
               "for learning)", check=lambda n: n >= 1, check_help="holdout_batches >= 1"),
    ]


def bias_step_error(weighted_spikes: torch.Tensor, ann: torch.Tensor) -> torch.Tensor:
    """The per-channel error ``mean(theta * s(t)) - mean(a)`` of one step (both ``[B, C, ...]``)."""
    return channels.mean(weighted_spikes) - channels.mean(ann)


@torch.no_grad()
def _calibrate_site(snn, ctx, site, seq: torch.Tensor, ann: torch.Tensor, alpha: float) -> None:
    """Learn ``site``'s bias table on one batch from its input sequence after the warm-up, ``[n, B, C, ...]``.

    ``n`` is ``snn.padded_steps(T)``: T, or a longer look-ahead (cos's rho) whose extra steps feed
    the later sites' look-aheads - every simulated step gets its row.
    """
    spec = site.spec
    drive = spec.biased(seq, 0)  # the spec's per-step biases (the current table) included
    n, C = drive.shape[0], drive.shape[2]
    table = spec.step_table(n, C)
    v = site.initial_state(drive[0])
    shape = (1, 1, C) + (1,) * (drive.dim() - 3)
    th = spec.threshold_tensor(drive, 2)
    count = ann.numel() // C  # values per channel: the means are over the union of the ranks' batches
    target = ctx.all_mean(channels.mean(ann), count)
    for t in range(n):
        step = drive[t:t + 1]
        rate = channels.mean(site.neuron.simulate(step, v).weighted(th)[0])
        e = ctx.all_mean(rate, count) - target  # bias_step_error, the ANN mean once
        delta = alpha * e
        table[t] -= delta.detach().to("cpu", table.dtype)  # the spec's bias is added: it holds -b
        v = site.neuron.simulate(step - delta.view(shape).to(step.dtype), v).v_last  # re-fire, carry on
    snn.set_spec(site.name, spec.replace(step_bias=table))


@torch.no_grad()
def _calibrate_batch(snn, ctx, x: torch.Tensor, ann: dict, T: int, alpha: float, bar) -> None:
    """Every site of one batch, in network order, in one simulation.

    ``snn.run(..., before_fire=...)`` hands each site its input sequence, driven by the sites
    before it as just corrected; the site learns its table on it and then fires with the new
    table. Same result as re-running the network up to each site, at the cost of one run.
    """
    warmup = snn.warmup

    def learn(site, seq):
        _calibrate_site(snn, ctx, site, seq[warmup:], ann[site.name], alpha)
        bar.update(1)

    snn.run(x, timesteps=T, until=list(snn.sites)[-1], before_fire=learn)


@torch.no_grad()
def _score(snn, ctx, batches, T: int) -> float:
    err, n = 0.0, 0
    for x in batches:
        err += float(((snn(x, timesteps=T) - ctx.ann(x)) ** 2).sum())
        n += x.shape[0]
    total = ctx.all_sum(torch.tensor([err, float(n)], dtype=torch.float64))  # over every rank's held-out images
    return float(total[0]) / max(1.0, float(total[1]))


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    T = ctx.timesteps_for(options)
    alpha, n_iter = options["alpha"], options["iterations"]
    hold = options["holdout_batches"] if options["select"] else 0
    batches = ctx.take(limit=options["batches"] + hold, desc="ftbc: calibration batches")
    if hold:
        if len(batches) <= hold:
            raise InputError(f"ftbc: select needs {options['batches']} + {hold} calibration batches but only "
                                f"{len(batches)} were given; pass more batches or lower holdout_batches.")
        batches, held = batches[:-hold], batches[-hold:]
        if len(batches) < options["batches"]:
            ctx.report["notes"].append(f"{NAME}: only {len(batches)} calibration batch(es) left for learning after "
                                       f"holding out {hold} (asked for {options['batches']})")
    anns = [ctx.site_activations(x) for x in batches]
    names = list(ctx.sites)
    best = None
    if hold:
        best = (_score(snn, ctx, held, T), 0, {n: snn.sites[n].spec for n in names})
    bar = ctx.progress_bar(desc="ftbc: temporal biases", total=n_iter * len(batches) * len(names), unit="site")
    for it in range(n_iter):
        for x, ann in zip(batches, anns):
            _calibrate_batch(snn, ctx, x, ann, T, alpha, bar)
        if hold:
            score = _score(snn, ctx, held, T)
            if score < best[0]:
                best = (score, it + 1, {n: snn.sites[n].spec for n in names})
    bar.close()
    if hold:
        for n, spec in best[2].items():
            if snn.sites[n].spec is not spec:
                snn.set_spec(n, spec)
        ctx.report["notes"].append(f"{NAME}: kept {best[1]} of {n_iter} iteration(s), chosen on {hold} held-out "
                                   f"calibration batch(es) by output MSE {best[0]:.4g}")
    ctx.report["notes"].append(f"{NAME}: temporal biases [T={T}, C] learned with alpha={alpha} on {len(batches)} "
                               f"batch(es) x {n_iter} iteration(s); T-specific: convert again for another T")
