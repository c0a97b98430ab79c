"""Per-layer conversion report: where does an SNN lose against its ANN?

``layer_report(ann, snn, x)`` runs the ANN and the SNN on the same batch and, for every
activation site in topological order, compares the ANN activation ``a`` with the SNN's
average output ``r`` (weighted spikes averaged over the counted steps, masks applied):

* ``firing_rate``: spikes per neuron per counted step; ``silent``: fraction of neurons that
  never fired;
* ``error``: mean ``|r - a|`` over all neurons of the site;
* ``clip_error``: mean ``relu(a - theta)``, the part of the activation above the threshold,
  which no rate can represent (clipping error);
* ``quant_error``: mean ``|r - min(a, theta)|``, what remains: quantization (flooring) and
  unevenness error, including what upstream sites passed on.

The errors are in the site's activation units; ``relative_error`` divides ``error`` by the
mean ANN activation. :func:`snnbridge.plots.plot_layer_report` draws the report next to its JSON.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .context import ConversionContext
from .graph import trace_for_conversion
from .plugin_manager import get_registry
from .runtime import SpikingModel


@torch.no_grad()
def layer_report(ann: nn.Module, snn: SpikingModel, x: torch.Tensor, timesteps: int | None = None) -> dict:
    """Compare each site of ``snn`` with the same site of ``ann`` on the batch ``x`` (see the module docstring)."""
    graph = trace_for_conversion(ann, claim=get_registry().claim_module)
    missing = set(snn.sites) - set(graph.sites)
    if missing:
        raise ValueError(f"the SNN has sites the ANN lacks ({', '.join(sorted(missing))}); pass the ANN it was "
                         "converted from.")
    device = next((p.device for p in snn.parameters()), x.device)
    x = x.to(device)
    ann_acts = ConversionContext(graph, timesteps=snn.timesteps, device=device).site_activations(x)
    with snn.record(keep="output") as rec:
        snn.run(x, timesteps)
    report: dict[str, Any] = {"timesteps": snn.timesteps if timesteps is None else int(timesteps),
              "steps_run": snn.steps_for(timesteps),
              "backend": snn.backend_name, "recipe": list(snn.recipe), "sites": []}
    for name, site in snn.sites.items():
        seq = rec[name].counted("output")  # [T, B, ...]
        th = site.spec.threshold
        th_b = th if isinstance(th, float) else site.spec.threshold_tensor(seq[0], 1)
        rate = seq.mean(0)  # average weighted output
        spikes = (seq != 0).float()
        a = ann_acts[name]
        clipped = torch.minimum(a, torch.as_tensor(th_b, device=a.device, dtype=a.dtype))
        err = (rate - a).abs().mean().item()
        report["sites"].append({
            "site": name, "kind": site.info.kind,
            "threshold": th if isinstance(th, float) else {"mean": float(th.mean()), "min": float(th.min()),
                                                            "max": float(th.max())},
            "firing_rate": spikes.mean().item(),
            "silent": (spikes.sum(0) == 0).float().mean().item(),
            "ann_mean": a.mean().item(),
            "error": err,
            "relative_error": err / max(a.mean().item(), 1e-12),
            "clip_error": torch.relu(a - clipped).mean().item(),
            "quant_error": (rate - clipped).abs().mean().item(),
        })
    return report
