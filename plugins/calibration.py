"""SNN Calibration (Li et al., ICML 2021; arXiv:2205.10121 / IJCV 2024). Code: github.com/yhhhli/SNN_Calibration.

Post-training calibration of a converted SNN against the *untouched* reference ANN
(``ctx.ann``): corrections edit only the SNN copy. T-specific.

1. **Threshold by clipping-error search** (fallback ``threshold``: only when no other
   plugin estimates thresholds). Per batch (``threshold_batches``), with ``M`` the batch
   maximum, ``theta = argmin_i mean (A - Q_T(A; M (1 - grid_step i)))^2`` over ``i < grid`` with
   ``Q_T(a; theta) = theta/T floor(clip(a T/theta, 0, T))`` (strict ``<``: ties keep the larger
   theta); an EMA merges the batches (``momentum``, the weight of the newest batch).
   ``search: max`` is the official "none" baseline (EMA of batch maxima).
2. **Neuron**: reset by subtraction, ``v0 = 0``, ``+theta/(2T)`` added every step
   (fallback ``step_shift``: off when the recipe has a ``v0_base`` such as LTB's theta/2).
3. **Corrections**, site by site in network order (each sees its corrected predecessors),
   with ``r = theta sum_t s(t) / T`` the SNN rate and ``a`` the ANN activation on the same images:
   BC ``bias_c -= mean_{batch,positions}(r - a)``; PC ``v0 += T mean_batch(a - r)`` per position;
   WC fits the feeding layer's weight (Adam, cosine LR, ``wc_*`` options) to
   ``sum_c (Q(W x + b) - a)^2`` on time-averaged inputs, ``Q(z) = theta/T clip(floor(z T/theta
   + o), 0, T)`` with ``o = (v0 + sum_t b_t)/theta`` the site's neuron (0.5, rounding, under the
   shift). Presets: ``light`` = BC, ``advanced`` = WC + PC, ``none``; ``steps`` picks any of
   ``bc``, ``pc``, ``wc``.

Why ``light`` is the default: it is the paper's cheap variant at a tenth of the conversion time or
less, and within a point of advanced from T = 16 on, where Li et al. evaluate. On 2,000 held-out
training images (``benchmarks/option_sweep.py --group weights``) light scores 48.35 / 68.25 /
78.30 / 83.20 / 91.00 / 92.45 % at T = 1 / 2 / 4 / 8 / 16 / 32 on the suite VGG (ANN 92.90 %; 4-12 s
on 2 CPU cores) against the suite's advanced (WC 512 images x 2000 iterations + PC; 76-119 s)
19.15 / 73.85 / 82.60 / 86.70 / 91.45 / 92.60 %; on the suite ResNet-20 (ANN 92.80 %) 35.25 /
69.65 / 90.90 % at T = 2 / 8 / 32 (13-51 s) against 37.50 / 76.70 / 91.55 % (175-380 s). So at
T = 2-8, where conversion time matters less than accuracy, choose ``preset: advanced`` (3.5-7
points more at T = 8) or stack ``ftbc`` on a threshold source (``["ltb", "ftbc"]``); at T = 1 keep
light. On all 10,000 test images light reaches 73.7 / 78.4 / 84.5 / 85.3 % on the VGG (ANN
86.21 %) at T = 4 / 8 / 16 / 32.

Why WC models the neuron (``wc_quantizer: neuron``) and the search keeps the official floor: the
official search and WC both model a *floor* quantizer although the shifted neuron rounds, so its WC
fits each weight to a function half a threshold away from the neuron's at T = 1. On 2,000 held-out
training images (``benchmarks/option_sweep.py --group weights``; suite VGG, ANN 92.90 %) the
suite's advanced (WC 512 images x 2000 iterations + PC) with the official floor WC scores 9.60 /
62.95 / 75.40 / 85.00 / 90.05 / 92.15 % at T = 1 / 2 / 4 / 8 / 16 / 32 and with the neuron's model
19.15 / 73.85 / 82.60 / 86.70 / 91.45 / 92.60 %; on the suite ResNet-20 (ANN 92.80 %) 24.55 / 72.15
/ 91.20 -> 37.50 / 76.70 / 91.55 % at T = 2 / 8 / 32. A round *search* is no default: with BC alone
it costs 4.4 / 1.3 / 0.8 points at T = 4 / 16 / 32 on the VGG (it gains at T = 1, 2, 8), and with
the neuron's WC it is mixed (VGG T = 4: 78.85 vs 82.60 %; ResNet-20 T = 8: 79.05 vs 76.70 %).

Where the official code differs: it calibrates at T = 32 whatever ``--T`` says; it runs PC
only for CIFAR "advanced" (``steps: [pc]`` here); its WC models a floor quantizer
(``wc_quantizer: floor`` reproduces it); BC/PC use one augmented training batch (here ``samples``
calibration images). BC is written into the feeding layer's bias like the official code, or,
where no layer's bias reaches the site unchanged, into a per-step neuron bias (the report says
so). More in docs/methods.md.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from snnbridge import (
    EMAMaxObserver,
    EMAObserver,
    MeanObserver,
    Option,
    PluginConflictError,
    PluginInfo,
    channels,
    hookimpl,
)

NAME = "snn_calibration"
ALIASES = ("calibration",)
STEPS = ("bc", "pc", "wc")
PRESETS = {"none": (), "light": ("bc",), "advanced": ("wc", "pc")}


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(
        summary="SNN Calibration: MSE clipping-threshold search, +theta/(2T) per step, bias / potential / weight "
                "calibration against the untouched ANN (T-specific)",
        reference="Li et al., A Free Lunch From ANN: Towards Efficient, Accurate Spiking Neural Networks Calibration, "
                  "ICML 2021; Li et al., Converting ANNs to SNNs via Parameter Calibration, arXiv:2205.10121 (IJCV "
                  "2024)",
        fallback=("threshold", "step_shift"), after=("threshold", "v0_base", "step_shift"), needs_data=True,
        t_specific=True, aliases=ALIASES)


@hookimpl
def snnbridge_add_options():
    return [
        Option("preset", str, "light", "light = bias calibration (BC); advanced = weight + potential calibration "
               "(WC + PC); none = threshold search and neuron only", choices=tuple(PRESETS)),
        Option("steps", list, None, "explicit corrections instead of the preset, any of bc, pc, wc (e.g. [pc])",
               nullable=True, check=lambda v: v is None or all(s in STEPS for s in v),
               check_help="a list of 'bc', 'pc', 'wc'"),
        Option("samples", int, 128, "images used by BC/PC (official: one training batch)",
               check=lambda n: n >= 1, check_help="samples >= 1"),
        Option("passes", int, 1, "BC/PC passes over the sites (official: 1)", check=lambda n: n >= 1,
               check_help="passes >= 1"),
        Option("search", str, "mse", "fallback threshold: mse (clipping-error grid search) or max (EMA of batch "
               "maxima, the official 'none' baseline)", choices=("mse", "max")),
        Option("search_quantizer", str, "floor", "SNN model in the threshold search: floor (official code) or round "
               "(what the shifted neuron does at t = T)", choices=("floor", "round")),
        Option("channelwise", bool, False, "search one threshold per channel (per feature for Linear)"),
        Option("threshold_batches", int, 7, "calibration batches of the threshold search", check=lambda n: n >= 1,
               check_help="threshold_batches >= 1"),
        Option("momentum", float, 0.1, "EMA weight of each new batch's threshold (theta <- (1-m) theta + m "
               "theta_batch; the official code keeps 0.9 of the old value, i.e. m = 0.1)",
               check=lambda m: 0 < m <= 1, check_help="0 < momentum <= 1"),
        Option("grid", int, 95, "number of threshold candidates max*(1 - grid_step*i)", check=lambda n: n >= 1,
               check_help="grid >= 1"),
        Option("grid_step", float, 0.01, "relative step between threshold candidates",
               check=lambda s: 0 < s < 1, check_help="0 < grid_step < 1"),
        Option("shift", str, "auto", "+theta/(2T) per step: auto (unless another plugin writes v0 = theta/2 or its own "
               "shift), on, off", choices=("auto", "on", "off")),
        Option("wc_samples", int, 1024, "images whose time-averaged inputs WC fits on", check=lambda n: n >= 1,
               check_help="wc_samples >= 1"),
        Option("wc_batch", int, 32, "samples per WC iteration", check=lambda n: n >= 1, check_help="wc_batch >= 1"),
        Option("wc_iters", int, 5000, "WC Adam iterations per site", check=lambda n: n >= 0,
               check_help="wc_iters >= 0"),
        Option("wc_quantizer", str, "neuron", "SNN model in WC's loss: neuron (the site's own start offset (v0 + "
               "sum of per-step biases) / theta: round under the +theta/(2T) shift or a v0 of theta/2), floor "
               "(official code) or round", choices=("neuron", "floor", "round")),
        Option("wc_lr", float, 1e-5, "WC Adam learning rate (cosine-annealed to 0)", check=lambda v: v > 0,
               check_help="wc_lr > 0"),
        Option("seed", int, 0, "seed of WC's sampling"),
    ]


@hookimpl
def snnbridge_tune_variants():
    # advanced (weight calibration) runs wc_iters Adam steps per site: try it after the cheap bias calibration.
    # Last, WC alone at the benchmark suite's budget: stacked as [ltb, {snn_calibration: {steps: [wc]}}, ftbc] it
    # is the suite ResNet-20's best recipe at T = 2 / 4 / 8 (56.10 / 66.56 / 81.97 % on the 10,000 test images;
    # ltb + ftbc 51.64 / 62.42 / 81.49 %; 2026-12-02 run, python -m benchmarks --networks resnet20).
    return [{"preset": "light"}, {"preset": "advanced"}, {"steps": ["wc"], "wc_samples": 512, "wc_iters": 2000}]


def _steps(options) -> tuple[str, ...]:
    chosen = options["steps"] if options["steps"] is not None else PRESETS[options["preset"]]
    return tuple(s for s in STEPS if s in chosen)


@hookimpl
def snnbridge_check_recipe(recipe, options):
    if options["shift"] != "on":
        return
    for cap, what in (("v0_base", "sets the base initial potential (theta/2)"),
                      ("step_shift", "already adds a per-step shift")):
        other = recipe.active_provider(cap)
        if other is not None and other.name != NAME:
            raise PluginConflictError(
                f"calibration with shift: on adds +theta/(2T) every step, but {other.name!r} {what}; both together "
                f"shift the neuron twice (the per-step half shift and v0 = theta/2 must never both be active). Use "
                f"calibration's shift: auto (or off), or remove {other.name!r}.")


def _shift_active(ctx, options) -> bool:
    return options["shift"] != "off" and ctx.recipe.is_active(NAME, "step_shift")


# -- stage 1: threshold ---------------------------------------------------------------------------------------


def mse_search(rows: torch.Tensor, T: int, grid: int, step: float, mode: str) -> torch.Tensor:
    """Per row of ``rows`` ([R, N]) the grid candidate ``max*(1 - step*i)`` with the smallest MSE (strict <).

    Zeros quantize to zero under both models, so a single row is searched over its positive
    values only (same argmin: the mean keeps the full count ``N`` as denominator).
    """
    n = rows.shape[1]
    a = rows.float()
    if a.shape[0] == 1:
        a = a[a > 0][None]
    top = rows.float().amax(dim=1)
    best = top.clone()
    best_err = torch.full_like(top, math.inf)
    if a.numel() == 0:
        return best
    half = 0.5 if mode == "round" else 0.0
    for i in range(grid):
        th = top * (1.0 - step * i)
        safe = torch.where(th > 0, th, torch.ones_like(th))[:, None]
        q = (a * (T / safe)).add_(half).clamp_(0, T).floor_().mul_(safe / T)
        err = q.sub_(a).square_().sum(dim=1) / n
        better = (err < best_err) & (th > 0)
        best = torch.where(better, th, best)
        best_err = torch.where(better, err, best_err)
    return best


class ClipSearchObserver(EMAObserver):
    """EMA over batches of the per-batch clipping-error search (:func:`mse_search`)."""

    def __init__(self, timesteps: int, grid: int, step: float, quantizer: str, momentum: float,
                 channel_axis: int | None):
        self.timesteps, self.grid, self.step, self.quantizer = int(timesteps), int(grid), float(step), quantizer
        super().__init__(momentum, channel_axis)

    def batch_statistic(self, rows):
        return mse_search(rows, self.timesteps, self.grid, self.step, self.quantizer)

    def key(self):
        return super().key() + (self.timesteps, self.grid, self.step, self.quantizer)


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    axis = 1 if options["channelwise"] else None
    if options["search"] == "max":
        observer = EMAMaxObserver(options["momentum"], axis)
    else:
        observer = ClipSearchObserver(ctx.timesteps_for(options), options["grid"], options["grid_step"],
                                      options["search_quantizer"], options["momentum"], axis)
    found = ctx.collect(observer, limit=options["threshold_batches"])
    return {n: ctx.usable_threshold(n, th, NAME) for n, th in found.items()}


# -- stage 2: neuron ------------------------------------------------------------------------------------------


@hookimpl
def snnbridge_configure_neuron(site, spec, ctx, options):
    if not _shift_active(ctx, options):
        return None
    T = ctx.timesteps_for(options)
    th = spec.threshold
    if isinstance(th, float) and (spec.step_bias is None or isinstance(spec.step_bias, float)):
        return spec.replace(step_bias=(spec.step_bias or 0.0) + th / (2 * T))
    table = spec.step_table(T, th.shape[0] if not isinstance(th, float) else site.channels)
    return spec.replace(step_bias=table + (th / (2 * T) if isinstance(th, float) else th.cpu()[None, :] / (2 * T)))


# -- stage 3: corrections -------------------------------------------------------------------------------------


@torch.no_grad()
def _snn_rates(snn, ctx, name: str, batches, T: int) -> torch.Tensor:
    """The SNN's mean weighted-spike rate at site ``name`` over the images of ``batches`` (``[C, ...]``; in a
    distributed conversion over every rank's images)."""
    with snn.record(name, keep="rate") as rec:
        for x in batches:
            snn.run(x, timesteps=T, until=name)
    return ctx.all_mean(rec.sample_mean(name, "rate"), sum(x.shape[0] for x in batches))


def _bias_correct(snn, name: str, err: torch.Tensor, T: int, notes: list) -> str:
    """Subtract the per-channel error ``err`` from the drive of site ``name``; return where it went."""
    feed = snn.feeding_layer(name)
    if feed is not None:
        feed.add_bias(-err)
        return feed.name
    spec = snn.sites[name].spec  # a row for every simulated step (more than T under a longer look-ahead)
    table = spec.step_table(snn.padded_steps(T), err.shape[0]) - err.detach().cpu()[None, :]
    snn.set_spec(name, spec.replace(step_bias=table))
    notes.append(f"{NAME}: site {name} has no single Conv/Linear feeding it; its bias correction is a per-step, "
                 f"per-channel neuron bias for T = {T}")
    return "step_bias"


def _bc_pc(snn, ctx, options, T: int, do_bc: bool, do_pc: bool, notes: list) -> None:
    batches = ctx.take(options["samples"], desc="calibration: BC/PC images")
    ann = ctx.collect(MeanObserver(per_position=True), batches=batches)
    bar = ctx.progress_bar(list(ctx.sites), desc=f"calibration: {'BC' if do_bc else ''}{'+' if do_bc and do_pc else ''}"
                           f"{'PC' if do_pc else ''}", unit="site")
    for name in bar:
        if do_bc:
            diff = _snn_rates(snn, ctx, name, batches, T) - ann[name]
            err = channels.mean(diff[None])
            where = _bias_correct(snn, name, err, T, notes)
            notes.append(f"{NAME}: BC at site {name} -> {where}, |mean error| {float(err.abs().mean()):.4g}")
        if do_pc:
            delta = T * (ann[name] - _snn_rates(snn, ctx, name, batches, T))
            snn.set_spec(name, snn.sites[name].spec.offset_v0(delta))


def mean_step_bias(spec, like: torch.Tensor, T: int) -> torch.Tensor | float:
    """The spec's per-step bias averaged over its first ``T`` steps, broadcastable to ``like`` (0.0 without one)."""
    b = spec.step_bias
    if b is None or isinstance(b, float):
        return b or 0.0
    mean_b = b[:T].float().mean(0)
    return float(mean_b) if mean_b.dim() == 0 else channels.broadcast(mean_b, like, 1)


def neuron_offset(spec, like: torch.Tensor, th, T: int) -> torch.Tensor | float:
    """The site's start offset in thresholds, ``(v0 + sum_{t<T} b_t) / theta``, broadcastable to ``like[:1]``.

    Under a constant current ``z`` an IF neuron with reset by subtraction that never owes two spikes in one
    step fires ``clip(floor(z T / theta + offset), 0, T)`` times in T steps: the quantizer WC fits the weight
    to. 0.5 under this plugin's ``+theta/(2T)`` shift or a v0 of theta/2 (LTB), 0 for a bare neuron.
    """
    start = spec.v0 if isinstance(spec.v0, float) else spec.v0_tensor(like[:1])
    return (start + T * mean_step_bias(spec, like[:1], T)) / th


class _QuantizedSquaredError(torch.autograd.Function):
    """WC's loss ``sum_c (Q(z) - a)^2`` averaged over batch and positions, ``Q(z) = (theta/T) floor_STE(clip(z T /
    theta + offset, 0, T))`` (``offset`` a float or a tensor broadcastable to ``z``), in a handful of in-place ops
    with its gradient ``2 (Q(z) - a) 1[0 < zT/theta + offset < T] / n`` saved from the forward pass: the same
    values autograd gives for that expression, at about half its cost (the ~15 elementwise ops it records, each a
    full pass over the batch, were most of a WC iteration)."""

    @staticmethod
    def forward(ctx, z, target, up, down, offset: float | torch.Tensor, T: int):  # type: ignore[override]
        u = z * up
        if isinstance(offset, torch.Tensor) or offset:
            u.add_(offset)
        inside = (u > 0).logical_and_(u < T)  # where the clip passes the gradient (torch.clamp's: open interval)
        diff = u.clamp_(0, T).floor_().mul_(down).sub_(target)
        n = z.numel() // z.shape[1]
        loss = diff.square().sum() / n
        ctx.save_for_backward(diff.mul_(inside))
        ctx.n = n
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        return diff * (grad * (2.0 / ctx.n)), None, None, None, None, None


def _fold_average_pool(layer, post):
    """``AvgPool2d(k)(conv(x; w))`` as one conv: the stride-1 kernel convolved with a ``k x k`` box of
    ``1/k^2`` and applied with stride ``k`` (identical up to rounding; 2-3x faster per WC iteration on CPU at
    32x32 and 16x16 maps, slower at 8x8, hence the size rule). None where the pattern does not apply."""
    if not (isinstance(layer, torch.nn.Conv2d) and len(post) == 1 and type(post[0]) is torch.nn.AvgPool2d):
        return None
    pool = post[0]
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else None
    stride = pool.stride if isinstance(pool.stride, int) else None
    if (k is None or stride != k or pool.padding != 0 or pool.ceil_mode or pool.divisor_override is not None
            or isinstance(layer.padding, str) or layer.padding_mode != "zeros" or layer.stride != (1, 1)
            or layer.dilation != (1, 1)):
        return None
    box = torch.full((1, 1, k, k), 1.0 / (k * k), dtype=layer.weight.dtype, device=layer.weight.device)
    bias = None if layer.bias is None else layer.bias.detach()

    def drive(weight, inp):
        o, i, kh, kw = weight.shape
        folded = torch.nn.functional.conv2d(weight.reshape(o * i, 1, kh, kw), box, padding=k - 1)
        return torch.nn.functional.conv2d(inp, folded.reshape(o, i, kh + k - 1, kw + k - 1), bias, stride=k,
                                          padding=layer.padding, groups=layer.groups)

    return drive


#: fold pooling into the conv only when the pooled map has at least this many positions (see _fold_average_pool)
_FOLD_MIN_POSITIONS = 64


def _wc_site(snn, ctx, options, name: str, batches, T: int, notes: list, gen: torch.Generator) -> None:
    feed = snn.feeding_layer(name)
    if feed is None:
        notes.append(f"{NAME}: WC skipped at site {name} (no single Conv/Linear feeding it)")
        return
    temporal = feed.temporal_input
    spec = snn.sites[name].spec
    xs, ds, As = [], [], []
    for x in batches:
        seen = []
        handle = feed.layer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].detach()))
        try:
            with torch.no_grad(), snn.record(name, keep="drive_mean") as rec:
                snn.run(x, timesteps=T, until=name)
        finally:
            handle.remove()
        B = x.shape[0]
        if temporal:
            parts = [s.reshape(-1, B, *s.shape[1:]) for s in seen]
            seq = torch.cat(parts, 0)[snn.warmup:snn.warmup + T]  # the T returned steps (not the look-ahead padding)
            xs.append(seq.mean(0))
        else:
            xs.append(seen[-1])
        drive = rec[name].drive_mean  # includes the per-step biases of the spec
        ds.append(drive - mean_step_bias(spec, drive, T))  # the raw current
        As.append(ctx.site_activations(x)[name])
    # a distributed conversion: every rank fits on the union of the ranks' images (in rank order), so all
    # ranks take the same Adam steps and end with the same weight
    xbar, dbar, target = (ctx.all_gather(torch.cat(t)) for t in (xs, ds, As))
    layer = feed.layer
    w0 = layer.weight.detach().clone()

    bias = {"bias": layer.bias.detach()} if layer.bias is not None else {}

    def drive_of(weight, inp):
        z = functional_call(layer, {"weight": weight, **bias}, (inp,))
        for m in feed.post:
            z = m(z)
        return z

    folded = _fold_average_pool(layer, feed.post)
    drive = folded if folded is not None and target[0, 0].numel() >= _FOLD_MIN_POSITIONS else drive_of
    with torch.no_grad():
        rest = dbar - drive(w0, xbar)  # the shortcut (residual sites) and what pooling adds over time
    th = spec.threshold_tensor(target, 1)
    up, down = T / th, th / T
    mode = options["wc_quantizer"]
    offset = neuron_offset(spec, target, th, T) if mode == "neuron" else 0.5 if mode == "round" else 0.0
    weight = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=options["wc_lr"], fused=True if weight.device.type in ("cpu", "cuda") else None)
    iters = options["wc_iters"]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iters), eta_min=0.0)
    n = xbar.shape[0]
    first = loss = None
    bar = ctx.progress_bar(range(iters), desc=f"calibration: WC {name}", unit="it")
    for _ in bar:
        idx = torch.randperm(n, generator=gen)[: options["wc_batch"]].to(xbar.device)
        z = drive(weight, xbar[idx]) + rest[idx]
        loss = _QuantizedSquaredError.apply(z, target[idx], up, down, offset, T)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if first is None:
            first = loss.detach()  # kept as a tensor: no host sync per iteration on a GPU
    with torch.no_grad():
        layer.weight.data.copy_(weight.detach())
    if first is not None and loss is not None:  # both set together; loss narrows for mypy
        last = float(loss.detach())
        notes.append(f"{NAME}: WC at site {name} ({feed.name}): loss {float(first):.4g} -> {last:.4g} over {iters} "
                     f"iterations")


@hookimpl
def snnbridge_correct_error(snn, ctx, options):
    T = ctx.timesteps_for(options)
    steps = _steps(options)
    notes = ctx.report["notes"]
    if "wc" in steps:
        gen = torch.Generator().manual_seed(options["seed"])
        batches = ctx.take(options["wc_samples"], desc="calibration: WC images")
        for name in ctx.sites:
            _wc_site(snn, ctx, options, name, batches, T, notes, gen)
    for _ in range(options["passes"]):
        if "bc" in steps or "pc" in steps:
            _bc_pc(snn, ctx, options, T, "bc" in steps, "pc" in steps, notes)
    shift = _shift_active(ctx, options)
    notes.append(f"{NAME}: calibrated for T = {T} (corrections: {', '.join(steps) or 'none'}; per-step +theta/(2T) "
                 f"shift {'on' if shift else 'off'}); T-specific: convert again for another T")
    if T != ctx.timesteps:
        notes.append(f"{NAME}: calibrated for T = {T} but converted for T = {ctx.timesteps}")
