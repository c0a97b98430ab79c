"""A small BN network trained for a few steps on synthetic data, and layer-wise error measures.

Shared by the data-driven correction tests (calibration, ftbc, ltb, stacking). Everything is
built in the test process from seeds: no downloads, a few seconds on one CPU core.
"""

from __future__ import annotations

from functools import cache, lru_cache

import torch
import torch.nn.functional as F
from torch import nn

import snnbridge

from .zoo import BNNet

CLASSES = 4


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images 3x8x8: a class template (fixed, seed 123) plus noise; labels uniform over the classes."""
    g = torch.Generator().manual_seed(123)
    templates = torch.randn(CLASSES, 3, 8, 8, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = templates[y] + 2.5 * torch.randn(n, 3, 8, 8, generator=g)
    return x, y


def _train(net: nn.Module, lr: float, steps: int) -> nn.Module:
    """Adam on batches of 64 synthetic training images (seeded per step)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = make_data(2048, seed=1)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@lru_cache(maxsize=1)
def _trained_state():
    torch.manual_seed(0)
    net = _train(BNNet(), lr=0.01, steps=120)
    return {k: v.clone() for k, v in net.state_dict().items()}


def trained_net() -> BNNet:
    """A fresh copy of the trained network (eval mode)."""
    net = BNNet()
    net.load_state_dict(_trained_state())
    return net.eval()


def calibration_batches(n_batches: int = 4, batch: int = 64, seed: int = 2) -> list[torch.Tensor]:
    x, _ = make_data(n_batches * batch, seed)
    return list(x.split(batch))


@lru_cache(maxsize=1)
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(512, seed=3)


@torch.no_grad()
def accuracy(snn_or_ann, timesteps: int | None = None) -> float:
    x, y = test_set()
    out = snn_or_ann(x) if timesteps is None else snn_or_ann(x, timesteps=timesteps)
    return float((out.argmax(1) == y).float().mean())


@torch.no_grad()
def ann_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every site's ANN activation for the batch ``x`` (the traced, BN-folded ANN; public API)."""
    graph = snnbridge.trace_for_conversion(model, claim=snnbridge.get_registry().claim_module)
    return snnbridge.ConversionContext(graph, timesteps=1).site_activations(x)


@torch.no_grad()
def layer_errors(snn, T: int, model: nn.Module | None = None) -> dict[str, dict[str, float]]:
    """Per site, on the test images: ANN activation ``a`` (reference ANN) vs SNN rate ``r`` and per-step outputs.

    ``channel``: mean over channels of |mean over batch and positions of (r - a)| (what BC targets);
    ``position``: mean over positions of |mean over batch of (r - a)| (PC); ``mse``: mean (r - a)^2
    (WC); ``steps``: mean over steps and channels of |mean of theta*s(t) - mean of a| (FTBC).
    ``model``: the ANN the SNN was converted from (default: :func:`trained_net`).
    """
    x, _ = test_set()
    acts = ann_activations(model if model is not None else trained_net(), x)
    with snn.record() as rec:
        snn.run(x, timesteps=T)
    out = {}
    for name, site in snn.sites.items():
        s = rec[name].counted("spikes")
        th = site.spec.threshold
        w = s * (th if isinstance(th, float) else site.spec.threshold_tensor(s, 2))
        r, a = w.mean(0), acts[name]
        dims = [d for d in range(a.dim()) if d != 1]
        step_means = w.mean(dim=[d + 1 for d in dims])  # [T, C]
        out[name] = {
            "channel": float((r - a).mean(dim=dims).abs().mean()),
            "position": float((r - a).mean(0).abs().mean()),
            "mse": float(((r - a) ** 2).mean()),
            "steps": float((step_means - a.mean(dim=dims)[None]).abs().mean()),
        }
    return out


def total(errors: dict[str, dict[str, float]], key: str) -> float:
    return sum(e[key] for e in errors.values())


@cache
def _trained_for_state(recipe_key: str):
    """State of the trained network prepared with a training-activation plugin and fine-tuned for 60 steps."""
    import json

    recipe = json.loads(recipe_key)
    torch.manual_seed(0)
    return _train(snnbridge.prepare(trained_net(), recipe), lr=0.005, steps=60).eval()


def trained_for(recipe: list) -> nn.Module:
    """The trained network fine-tuned with a training activation (e.g. ``[{"qcfs": {...}}]``), cached per recipe."""
    import copy
    import json

    return copy.deepcopy(_trained_for_state(json.dumps(recipe, sort_keys=True)))
