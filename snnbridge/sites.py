"""Activation sites: the places in a network where an ANN nonlinearity becomes a layer of neurons.

Graph preparation replaces every recognised activation (``nn.ReLU``, ``F.relu``,
``torch.relu``, ``nn.ReLU6``, clip-style ``Hardtanh(0, m)``/``clamp(min=0, max=m)``, and
modules a plugin claims, such as a QCFS activation) with one :class:`ActivationSite`
module *per call site* (a ``nn.ReLU`` instance that is called twice gives two sites).

In the prepared ANN an :class:`ActivationSite` still computes the original activation,
so the prepared graph is numerically the ANN; observers hook into it to collect
statistics. The runtime later swaps each site for a layer of spiking neurons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class SiteInfo:
    """What the core knows about one activation site.

    ``kind`` names the original activation (``"relu"``, ``"relu6"``, ``"clip"`` or a
    plugin's claim, e.g. ``"qcfs"``); ``clip_max`` is the activation's upper bound if it
    has one; ``shape`` is the activation shape without batch, filled in by the first
    observation; ``claim`` holds whatever a plugin returned when claiming the module;
    ``levels`` is the claimed activation's quantization level count, when it has one.
    ``pre_pool`` names the max-pool that was moved in front of the neuron, if any.
    """

    name: str
    kind: str
    clip_max: float | None = None
    source: str = ""
    shape: tuple[int, ...] | None = None
    claim: Any = None
    pre_pool: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> int | None:
        """Quantization levels of the trained activation (the claim's ``levels``, e.g. QCFS's L), else None.

        A quantized ANN's site outputs one of ``levels`` steps per threshold; corrections that
        pre-simulate (a spike count needs about ``levels`` steps to say which step) size
        themselves by it.
        """
        n = getattr(self.claim, "levels", None)
        return None if n is None else int(n)

    @property
    def channels(self) -> int | None:
        """The activation's channel count (``shape[0]``), or None before the first observation."""
        return None if self.shape is None else self.shape[0]


class ActivationSite(nn.Module):
    """Placeholder for one activation in the prepared ANN; computes the original activation."""

    def __init__(self, info: SiteInfo, activation: nn.Module | None = None):
        super().__init__()
        self.info = info
        # the original activation module when it carries state (e.g. a plugin's trained
        # activation with a learned threshold); plain ReLU-like sites need none
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:
            return self.activation(x)
        if self.info.clip_max is None:
            return torch.relu(x)
        return torch.clamp(x, 0.0, self.info.clip_max)

    def extra_repr(self) -> str:
        clip = f", clip_max={self.info.clip_max}" if self.info.clip_max is not None else ""
        return f"{self.info.name}: {self.info.kind}{clip}"
