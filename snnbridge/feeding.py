"""Which layer of a converted SNN feeds a site: where a per-channel correction of its drive can go.

Bias-style corrections (SNN Calibration's BC, a third-party plugin's) are best written into
the bias of the Conv/Linear whose output reaches the site unchanged by anything but pooling
(a per-channel constant passes average and max pooling unchanged), optionally joined by a
residual add. :func:`feeding_layer` finds that layer in the SNN copy (never in the user's
model); ``None`` means there is none (e.g. a BatchNorm kept after an add), and the
correction belongs in the neurons' per-step bias instead (``NeuronSpec.step_bias``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import cast

import torch
from torch import fx, nn

from .graph import is_site_node, site_node
from .timeline import TimeExpand

#: modules a per-channel constant passes through unchanged (in the ``[n*B, C, ...]`` layout)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Feed:
    """The layer feeding a site in the SNN copy: ``site_in = post(layer(x)) [+ shortcut]``.

    ``name``: the layer's module path in ``snn.graph_module``; ``layer``: the module;
    ``post``: the pooling modules between it and the site; ``residual``: whether an add joins
    a shortcut right before the site; ``node``: the layer's fx node.
    """

    name: str
    layer: nn.Module
    post: list[nn.Module]
    residual: bool
    node: fx.Node

    @property
    def temporal_input(self) -> bool:
        """True when the layer's input depends on neurons (changes over time); False when it is the static image."""
        seen, stack = set(), list(self.node.all_input_nodes)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if is_site_node(n):
                return True
            stack.extend(n.all_input_nodes)
        return False

    def add_bias(self, delta: torch.Tensor) -> None:
        """Add a per-output-channel ``delta`` to the layer's bias (creating a bias if it has none)."""
        layer = self.layer
        weight = cast(torch.Tensor, layer.weight)
        delta = delta.to(weight.device, weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(delta.clone(), requires_grad=False)
        else:
            cast(torch.Tensor, layer.bias).data.add_(delta)


def _bias_safe(m: nn.Module) -> bool:
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        return all(p == 0 for p in pad) or not m.count_include_pad
    return isinstance(m, _POOLS)


def _walk(gm: fx.GraphModule, node, chain: list) -> tuple[fx.Node, list] | None:
    """Follow single-user pooling (and time-broadcast) nodes back to a Conv/Linear node."""
    while isinstance(node, fx.Node) and node.op == "call_module" and len(node.users) == 1:
        m = gm.get_submodule(str(node.target))
        if isinstance(m, _LAYERS):
            calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target)
            return (node, chain[::-1]) if calls == 1 else None  # a shared module: its bias is not ours
        if isinstance(m, TimeExpand):  # a static value broadcast over time
            node = node.args[0]
            continue
        if not _bias_safe(m):
            return None
        chain.append(m)
        node = node.args[0]
    return None


def feeding_layer(graph_module: fx.GraphModule, site: str) -> Feed | None:
    """The Conv/Linear whose per-channel bias reaches ``site`` unchanged, or None (see the module docstring).

    Accepted paths: ``layer -> [pooling]* -> site`` and ``layer -> [pooling]* -> add -> site``
    (a residual site: the first operand leading to a layer is taken, the other is the shortcut).
    """
    node = site_node(graph_module, site)
    if node is None:
        return None
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return None
    residual = src.op == "call_function" and src.target in (operator.add, torch.add) and len(src.users) == 1
    for operand in (src.args[:2] if residual else (src,)):
        found = _walk(graph_module, operand, [])
        if found is not None:
            layer_node, chain = found
            return Feed(str(layer_node.target), graph_module.get_submodule(str(layer_node.target)), chain, residual,
                        layer_node)
    return None
