"""Plumbing shared by the data-driven correction plugins (calibration, ftbc, ltb).

No paper math lives here: only ways to *measure* a converted SNN against the untouched
reference ANN and to *realize* a correction generically.

* :func:`gather` - a fixed set of calibration images (``n`` samples) as a list of batches.
* :func:`record` - run the SNN (genuine backend neurons) and record, per site, the input
  drive, the weighted-spike rate and per-step channel means through ``SpikingSite.recorders``.
* :func:`channel_mean` - mean over every dimension but the channel one (``[B, C, ...] -> [C]``).
* :func:`feeding_layer` - the Conv/Linear of the *SNN copy* whose bias reaches a site
  unchanged (only per-channel-constant-preserving ops in between), so a per-channel bias
  correction can be written into that layer instead of into the neuron spec.
* :func:`step_table` / :func:`add_v0` - combine per-step biases and initial potentials
  written by several plugins.
* :class:`TimestepCheck` - a picklable ``SpikingModel.timestep_checks`` entry that warns (or
  raises) when a T-specific correction is run for another T.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from snnbridge import InputError, NeuronSpec

#: modules a per-channel constant passes through unchanged (in the ``[n*B, C, ...]`` layout)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class TimestepMismatchWarning(UserWarning):
    """A T-specific correction (calibrated for one T) is run for another T."""


class TimestepCheck:
    """``snn.timestep_checks`` entry: ``plugin``'s corrections hold for ``timesteps`` steps only."""

    def __init__(self, plugin: str, timesteps: int, policy: str = "warn"):
        self.plugin, self.timesteps, self.policy = plugin, int(timesteps), policy

    def __call__(self, snn, T: int) -> None:
        if T == self.timesteps or self.policy == "ignore":
            return
        msg = (f"{self.plugin}: the corrections were calibrated for T = {self.timesteps} steps but the SNN is run for "
               f"T = {T}; data-driven corrections are T-specific (METHODS.md 0.4-e). Convert again with "
               f"timesteps={T} (or the plugin's 'timesteps' option) for this T.")
        if self.policy == "error":
            raise InputError(msg)
        warnings.warn(msg, TimestepMismatchWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"TimestepCheck({self.plugin!r}, T={self.timesteps}, {self.policy})"


# -- data ------------------------------------------------------------------------------------------------


def gather(ctx, n: int | None, desc: str, limit: int | None = None) -> list[torch.Tensor]:
    """Calibration inputs holding ``n`` samples in all (the last batch cut), or every batch when ``n`` is None."""
    out, have = [], 0
    for x in ctx.batches(desc=desc, limit=limit):
        if n is not None and have + x.shape[0] > n:
            x = x[: n - have]
        out.append(x)
        have += x.shape[0]
        if n is not None and have >= n:
            break
    return out


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except dimension 1 (``[B, C, ...] -> [C]``)."""
    dims = [d for d in range(t.dim()) if d != 1]
    return t.mean(dim=dims) if dims else t


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    dims = [d for d in range(t.dim()) if d != 1]
    return t.sum(dim=dims) if dims else t


def threshold_like(spec: NeuronSpec, like: torch.Tensor, channel_dim: int = 1):
    """The spec's threshold broadcastable against ``like`` (float when layer-wise)."""
    th = spec.threshold
    return th if isinstance(th, float) else spec.threshold_tensor(like, channel_dim)


# -- recording a run --------------------------------------------------------------------------------------


@dataclass
class SiteRecord:
    """What one site did during :func:`record` (sums over the recorded batches).

    ``rate``: per-sample weighted-spike rate ``theta * sum_t s(t) / T`` (``[B, C, ...]``, the
    last batch only, when ``keep_rate``); ``rate_sum``: sum over samples of the rate
    (``[C, ...]``); ``step_sum``: per-step, per-channel sums of ``theta * s(t)`` over the
    samples and positions (``[T, C]``) and ``count`` the number of values per channel and step;
    ``drive``: the input drive ``[T, B, ...]`` incl. per-step biases (last batch, when
    ``keep_drive``); ``drive_sum``: sum over steps of the drive ``[B, ...]`` (last batch).
    """

    samples: int = 0
    rate_sum: torch.Tensor | None = None
    step_sum: torch.Tensor | None = None
    count: int = 0
    rate: torch.Tensor | None = None
    drive: torch.Tensor | None = None
    drive_sum: torch.Tensor | None = None
    _parts: list = field(default_factory=list, repr=False)


@torch.no_grad()
def record(snn, batches, names, T: int, *, keep_drive: bool = False, keep_rate: bool = False,
           per_step: bool = False) -> dict[str, SiteRecord]:
    """Run ``snn`` for ``T`` counted steps on each batch and record the sites ``names``.

    Steps of a network warm-up (pre-simulation) are not counted.
    """
    names = list(names)
    recs = {n: SiteRecord() for n in names}
    sites = snn.sites
    saved = {n: list(sites[n].recorders) for n in names}
    whole = keep_drive or snn.warmup > 0

    def make(n):
        def rec(site, drive, result):
            recs[n]._parts.append((drive if whole else drive.sum(0), result.spikes))
        return rec

    try:
        for n in names:
            sites[n].recorders.append(make(n))
        for x in batches:
            for r in recs.values():
                r._parts = []
            snn.run(x, timesteps=T)
            for n in names:
                r, spec = recs[n], sites[n].spec
                spikes = torch.cat([p[1] for p in r._parts], 0)[-T:]  # counted steps only
                weighted = spikes * threshold_like(spec, spikes, 2)
                rate = weighted.sum(0) / T
                r.samples += rate.shape[0]
                r.rate_sum = rate.sum(0) if r.rate_sum is None else r.rate_sum + rate.sum(0)
                if keep_rate:
                    r.rate = rate
                if per_step:
                    dims = [d for d in range(1, weighted.dim()) if d != 2]
                    s = weighted.sum(dim=dims)
                    r.step_sum = s if r.step_sum is None else r.step_sum + s
                    r.count += weighted[0].numel() // weighted.shape[2]
                if whole:
                    drive = torch.cat([p[0] for p in r._parts], 0)[-T:]
                    r.drive = drive if keep_drive else None
                    r.drive_sum = drive.sum(0)
                else:
                    r.drive_sum = sum(p[0] for p in r._parts)
                r._parts = []
    finally:
        for n in names:
            sites[n].recorders[:] = saved[n]
    return recs


# -- realizing corrections ----------------------------------------------------------------------------------


def step_table(bias, T: int, channels: int) -> torch.Tensor:
    """An existing ``NeuronSpec.step_bias`` (None, float, [T'] or [T', C]) as a ``[T, C]`` table (on the CPU)."""
    if bias is None:
        return torch.zeros(T, channels)
    if isinstance(bias, float):
        return torch.full((T, channels), bias)
    if bias.shape[0] < T:
        raise InputError(f"a per-step bias table of {bias.shape[0]} steps cannot be extended to {T} steps; "
                         "calibrate every T-specific plugin of the recipe for the same T.")
    b = bias[:T].detach().float().cpu()
    if b.dim() == 1:
        return b[:, None].expand(T, channels).clone()
    return b.clone()


def add_v0(v0, delta: torch.Tensor) -> torch.Tensor:
    """``v0`` (float, ``[C]`` or ``[C, ...]``) plus a per-position ``delta`` (``[C, ...]``)."""
    if isinstance(v0, float):
        return delta + v0
    v0 = v0.to(delta.dtype)
    if v0.dim() == 1 and delta.dim() > 1:
        v0 = v0.view(-1, *([1] * (delta.dim() - 1)))
    return v0 + delta


@dataclass
class Feed:
    """The layer feeding a site in the SNN copy: ``site_in = post(layer(x)) [+ other]``.

    ``name``: the layer's module path in ``snn.graph_module``; ``post``: the pooling modules
    between it and the site (or the residual add); ``residual``: whether an add joins
    another operand right before the site; ``node``: the layer's fx node.
    """

    name: str
    layer: nn.Module
    post: list[nn.Module]
    residual: bool
    node: fx.Node


def _bias_safe(m: nn.Module) -> bool:
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        return all(p == 0 for p in pad) or not m.count_include_pad
    return isinstance(m, _POOLS)


def _walk(gm: fx.GraphModule, node, chain: list) -> tuple[fx.Node, list] | None:
    """Follow single-user pooling (and time-broadcast) nodes back to a Conv/Linear node."""
    while isinstance(node, fx.Node) and node.op == "call_module" and len(node.users) == 1:
        m = gm.get_submodule(node.target)
        if isinstance(m, _LAYERS):
            calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target)
            return (node, chain[::-1]) if calls == 1 else None  # a shared module: its bias is not ours
        if type(m).__name__ == "TimeExpand":  # runtime broadcast of a static value over time
            node = node.args[0]
            continue
        if not _bias_safe(m):
            return None
        chain.append(m)
        node = node.args[0]
    return None


def feeding_layer(snn, name: str) -> Feed | None:
    """The Conv/Linear of the SNN copy whose per-channel bias reaches site ``name`` unchanged, or None.

    Accepted paths: ``layer -> [pooling]* -> site`` and ``layer -> [pooling]* -> add -> site``
    (a residual site: the first operand leading to a layer is taken, the other operand is
    the shortcut). Anything else (a kept BatchNorm, a layer with several users, ...) gives None.
    """
    gm = snn.graph_module
    target = f"snnsite_{name}"
    site_node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == target), None)
    if site_node is None:
        return None
    src = site_node.args[0]
    if not isinstance(src, fx.Node):
        return None
    if src.op == "call_function" and src.target in (operator.add, torch.add) and len(src.users) == 1:
        for operand in src.args[:2]:
            found = _walk(gm, operand, [])
            if found is not None:
                node, chain = found
                return Feed(str(node.target), gm.get_submodule(node.target), chain, True, node)
        return None
    found = _walk(gm, src, [])
    if found is None:
        return None
    node, chain = found
    return Feed(str(node.target), gm.get_submodule(node.target), chain, False, node)


def input_is_temporal(snn, feed: Feed) -> bool:
    """True when the feeding layer's input depends on neurons (changes over time)."""
    seen, stack = set(), list(feed.node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and str(n.target).startswith("snnsite_"):
            return True
        stack.extend(n.all_input_nodes)
    return False


def add_layer_bias(feed: Feed, delta: torch.Tensor) -> None:
    """Add a per-output-channel ``delta`` to the feeding layer's bias (creating one if absent)."""
    layer = feed.layer
    delta = delta.to(layer.weight.device, layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.clone(), requires_grad=False)
    else:
        layer.bias.data.add_(delta)
