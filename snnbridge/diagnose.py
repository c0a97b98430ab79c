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
mean ANN activation. ``plot_layer_report`` draws the report next to its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .graph import prepare_graph, site_attr
from .plugin_manager import get_registry
from .runtime import SpikingModel


@torch.no_grad()
def layer_report(ann: nn.Module, snn: SpikingModel, x: torch.Tensor, timesteps: int | None = None) -> dict:
    """Compare each site of ``snn`` with the same site of ``ann`` on the batch ``x`` (see the module docstring)."""
    prepared = prepare_graph(ann, claim=get_registry().claim_module)
    missing = set(snn.sites) - set(prepared.sites)
    if missing:
        raise ValueError(f"the SNN has sites the ANN lacks ({', '.join(sorted(missing))}); pass the ANN it was "
                         "converted from.")
    device = next((p.device for p in snn.parameters()), x.device)
    x = x.to(device)
    prepared.module.to(device)
    ann_acts: dict[str, torch.Tensor] = {}
    handles = [prepared.module.get_submodule(site_attr(n)).register_forward_hook(
        lambda m, i, o, n=n: ann_acts.__setitem__(n, o.detach())) for n in snn.sites]
    prepared.module(x)
    for h in handles:
        h.remove()

    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in snn.sites}
    handles = [site.register_forward_hook(lambda m, i, o, n=n: outputs[n].append(o.detach()))
               for n, site in snn.sites.items()]
    try:
        snn.run(x, timesteps)
    finally:
        for h in handles:
            h.remove()
    B = x.shape[0]
    warm = snn.warmup
    report = {"timesteps": snn.timesteps if timesteps is None else int(timesteps), "steps_run": snn.steps_for(timesteps),
              "backend": snn.backend_name, "sites": []}
    for name, site in snn.sites.items():
        seq = torch.cat([o.view(-1, B, *o.shape[1:]) for o in outputs[name]], 0)[warm:]  # [T, B, ...]
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


def plot_layer_report(report: dict, path: str | Path) -> tuple[Path, Path]:
    """Save the report as ``<path>.json`` and a two-panel plot ``<path>.png``; return both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = path.with_suffix(".json"), path.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=2))
    sites = report["sites"]
    idx = range(len(sites))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(sites) + 2), 6), sharex=True)
    ax1.bar(idx, [s["clip_error"] for s in sites], label="clipping error")
    ax1.bar(idx, [s["quant_error"] for s in sites], bottom=[s["clip_error"] for s in sites],
            label="quantization + unevenness error")
    ax1.plot(idx, [s["error"] for s in sites], "k.", label="|SNN rate - ANN|")
    ax1.set_ylabel("mean error (activation units)")
    ax1.legend(fontsize=8)
    ax1.set_title(f"per-site conversion error, T={report['timesteps']} ({report['steps_run']} steps run), "
                  f"backend {report['backend']}")
    ax2.bar(idx, [s["firing_rate"] for s in sites], color="tab:green", label="firing rate")
    ax2.plot(idx, [s["silent"] for s in sites], "r.-", label="silent fraction")
    ax2.set_ylabel("spikes / neuron / step")
    ax2.set_xticks(list(idx), [s["site"] for s in sites], rotation=60, ha="right", fontsize=7)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
