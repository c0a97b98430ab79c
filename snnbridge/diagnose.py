"""Per-site conversion diagnostics: where does an SNN lose against its ANN?

``layer_report(ann, snn, x)`` runs the ANN and the SNN on the same batch and, for every
activation site in topological order, compares the ANN activation ``a`` with the SNN's
average output ``r`` (weighted spikes averaged over the T counted steps, masks applied;
``r <= theta`` since a neuron fires at most once per step):

* ``firing_rate``: spikes per neuron per counted step; ``silent``: fraction of the site's
  neurons (positions ``[C, ...]``) that never fired on any sample;
* ``error``: mean ``|r - a|`` over all neurons and samples of the site;
* ``clip_error``: mean ``relu(a - theta)``, the part of the activation above the threshold,
  which no rate can represent (clipping error); ``clipped``: the fraction of activations
  above the threshold;
* ``quant_error``: mean ``|r - min(a, theta)|``, what remains: quantization (flooring) and
  unevenness error, including what upstream sites passed on. Because ``r <= theta``, the
  split is exact per neuron: ``|r - a| = relu(a - theta) + |r - min(a, theta)|``, so
  ``error == clip_error + quant_error``;
* ``offset_spikes``: the spike count ``N`` of each neuron against ``N* = floor(min(a, theta)
  * T / theta + 1/2)``, the count of the T-step rate code closest to the ANN activation (for
  a QCFS-trained ANN with L = T it is exactly the ANN's rate times T, as in Hao et al.'s
  offset spike ``psi = N - N*``): the fractions of neurons with extra (``psi > 0``) and missing
  (``psi < 0``) spikes, and the mean of ``psi`` and of ``|psi|``;
* ``share``: the site's ``relative_error`` (``error`` over the mean ANN activation, so sites
  of different scales compare) as a fraction of the sum over all sites. Errors accumulate
  downstream, so the share says where the mismatch is seen, not only where it starts.

The vocabulary is the one of the error analyses of Bu et al., *Optimal ANN-SNN Conversion
for High-accuracy and Ultra-low-latency SNNs* (QCFS), ICLR 2022 (github.com/putshua/SNN_conversion_QCFS),
and Hao et al., *Bridging the Gap between ANNs and SNNs by Calibrating Offset Spikes* (COS),
ICLR 2023 (github.com/hzc1208/ANN2SNN_COS). :class:`SiteProbe` accumulates the same
statistics over many batches (what :func:`snnbridge.report` uses);
:func:`snnbridge.plots.plot_layer_report` draws a report next to its JSON.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .context import ConversionContext
from .errors import InputError
from .graph import trace_for_conversion
from .plugin_manager import get_registry
from .recording import Recording
from .runtime import SpikingModel, SpikingSite


def threshold_summary(site: SpikingSite) -> float | dict[str, float]:
    """A site's threshold: the float, or ``{channels, min, median, max, mean}`` of a per-channel threshold."""
    th = site.spec.threshold
    if isinstance(th, float):
        return th
    return {"channels": int(th.numel()), "min": float(th.min()), "median": float(th.median()),
            "max": float(th.max()), "mean": float(th.mean())}


class _SiteStats:
    """Running sums of one site's statistics over batches (float64, so many batches add up exactly enough)."""

    def __init__(self, site: SpikingSite):
        self.site = site
        self.samples = 0
        self.elements = 0
        self.fired: torch.Tensor | None = None
        self.sums: dict[str, float] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value.double().sum())

    def add(self, rate: torch.Tensor, ann: torch.Tensor | None, timesteps: int) -> None:
        """One batch: the SNN's mean output ``rate`` ``[B, ...]`` and the ANN's activation (or None)."""
        th = self.site.spec.threshold_tensor(rate, 1)
        th_t = torch.as_tensor(th, device=rate.device, dtype=rate.dtype)
        fired = (rate > 0).any(0)
        self.fired = fired if self.fired is None else self.fired | fired
        self.samples += int(rate.shape[0])
        self.elements += rate.numel()
        self._add("spikes_per_step", rate / th_t)
        if ann is None:
            return
        if ann.shape != rate.shape:
            raise InputError(f"site {self.site.name!r}: the ANN's activation is shaped {list(ann.shape)}, the SNN's "
                             f"{list(rate.shape)}; pass the ANN the SNN was converted from.")
        a = ann.to(rate.dtype)
        inside = torch.minimum(a, th_t)
        count = torch.round(rate * timesteps / th_t)
        ideal = torch.floor(inside.clamp(min=0) * timesteps / th_t + 0.5)
        psi = count - ideal
        self._add("ann", a)
        self._add("error", (rate - a).abs())
        self._add("clip_error", torch.relu(a - th_t))
        self._add("quant_error", (rate - inside).abs())
        self._add("clipped", (a > th_t).to(rate.dtype))
        self._add("extra", (psi > 0).to(rate.dtype))
        self._add("missing", (psi < 0).to(rate.dtype))
        self._add("psi", psi)
        self._add("abs_psi", psi.abs())

    def result(self) -> dict[str, Any]:
        site, n = self.site, max(1, self.elements)
        mean = {k: v / n for k, v in self.sums.items()}
        out: dict[str, Any] = {
            "site": site.name, "kind": site.info.kind,
            "shape": list(site.info.shape) if site.info.shape else None,
            "threshold": threshold_summary(site), "samples": self.samples,
            "firing_rate": mean.get("spikes_per_step", 0.0),
            "silent": 1.0 - float(self.fired.float().mean()) if self.fired is not None else 1.0,
        }
        if "ann" not in mean:  # no ANN: the comparisons are unknown, not zero
            out.update({k: None for k in ("ann_mean", "error", "relative_error", "clip_error", "quant_error",
                                          "clipped", "offset_spikes", "share")})
            return out
        out.update({
            "ann_mean": mean["ann"], "error": mean["error"],
            "relative_error": mean["error"] / max(mean["ann"], 1e-12) if mean["error"] > 0 else 0.0,
            "clip_error": mean["clip_error"], "quant_error": mean["quant_error"], "clipped": mean["clipped"],
            "offset_spikes": {"extra": mean["extra"], "missing": mean["missing"], "mean": mean["psi"],
                              "mean_abs": mean["abs_psi"]},
            "share": None,  # set once every site is known (SiteProbe.results)
        })
        return out


class SiteProbe:
    """Per-site ANN-vs-SNN statistics accumulated over batches (see the module docstring).

    ``ann`` is traced once (a copy; the user's model is never run or changed) and may be
    None: then only the SNN's own statistics (thresholds, firing rates, silent neurons)
    are kept, as for an SNN whose thresholds were folded into its weights
    (``convert(..., fold_scales=True)``: its outputs are in units of the original thresholds,
    not the ANN's; ``compared`` is False and ``not_compared`` says why). Use it as::

        probe = SiteProbe(ann, snn)
        for x in batches:
            logits, acts = probe.ann_forward(x)
            with probe.recording() as rec:
                snn.run(x, T)
            probe.add(rec, acts, T)
        sites = probe.results()
    """

    def __init__(self, ann: nn.Module | None, snn: SpikingModel):
        if not isinstance(snn, SpikingModel):
            raise InputError(f"expected a converted model (what snnbridge.convert or snnbridge.load return), got "
                             f"{type(snn).__name__}.")
        self.snn = snn
        self.device = next((p.device for p in snn.parameters()), torch.device("cpu"))
        self.ctx: ConversionContext | None = None
        if ann is not None:
            if not isinstance(ann, nn.Module):
                raise InputError(f"the ANN must be a torch.nn.Module, got {type(ann).__name__}.")
            graph = trace_for_conversion(ann, claim=get_registry().claim_module)
            missing = [s for s in snn.sites if s not in graph.sites]
            if missing:
                raise InputError(f"the SNN has sites the ANN lacks ({', '.join(missing)}); pass the ANN it was "
                                 "converted from.")
            self.ctx = ConversionContext(graph, timesteps=snn.timesteps, device=self.device)
        #: why the ANN's activations are not compared with the SNN's outputs (None: they are)
        self.not_compared: str | None = None
        if ann is None:
            self.not_compared = "no ANN was given"
        elif "fold_scales" in (snn.report or {}):
            self.not_compared = ("the SNN's thresholds are folded into its weights (fold_scales), so its outputs are "
                                 "0/1 spikes in units of the original thresholds; report on the SNN before folding")
        self.stats = {name: _SiteStats(site) for name, site in snn.sites.items()}

    @torch.no_grad()
    def ann_forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The ANN's output and every site's activation on ``x`` (``(None, {})`` without an ANN)."""
        if self.ctx is None:
            return None, {}
        acts: dict[str, torch.Tensor] = {}
        with self.ctx.hooks(lambda name, i, o: acts.__setitem__(name, o.detach())):
            out = self.ctx.ann(x.to(self.device))
        return out, acts

    @property
    def compared(self) -> bool:
        """Whether the ANN's activations are compared with the SNN's outputs (errors, offset spikes, shares)."""
        return self.not_compared is None

    def recording(self) -> Recording:
        """A recording of what :meth:`add` needs (each site's mean output; no sequences are kept)."""
        return self.snn.record(keep="rate")

    def add(self, rec: Recording, acts: dict[str, torch.Tensor], timesteps: int) -> None:
        """Add one recorded run of ``timesteps`` counted steps and the ANN activations of the same batch."""
        for name, stats in self.stats.items():
            rate = rec[name].rate
            assert rate is not None  # recorded with keep="rate"
            stats.add(rate, acts.get(name) if self.compared else None, timesteps)

    def results(self) -> list[dict[str, Any]]:
        """One dict per site, in network order (the keys of the module docstring)."""
        sites = [s.result() for s in self.stats.values()]
        rel = [s["relative_error"] for s in sites if s["relative_error"] is not None]
        total = math.fsum(rel)
        for s in sites:
            if s["relative_error"] is not None:
                s["share"] = s["relative_error"] / total if total > 0 else 0.0
        return sites


@torch.no_grad()
def layer_report(ann: nn.Module, snn: SpikingModel, x: torch.Tensor, timesteps: int | None = None) -> dict:
    """Compare each site of ``snn`` with the same site of ``ann`` on the batch ``x`` (see the module docstring)."""
    probe = SiteProbe(ann, snn)
    T = snn.timesteps if timesteps is None else int(timesteps)
    x = x.to(probe.device)
    _, acts = probe.ann_forward(x)
    with probe.recording() as rec:
        snn.run(x, T)
    probe.add(rec, acts, T)
    return {"timesteps": T, "steps_run": snn.steps_for(T), "backend": snn.backend_name, "recipe": list(snn.recipe),
            "sites": probe.results()}
