"""Tiny model factories for the command-line tests (``--model _cli_models:make_net``)."""

from __future__ import annotations

import torch
from torch import nn

from snnbridge.runtime import Adjustment, SiteCorrection


class TinyConvNet(nn.Module):
    """conv-BN-ReLU, max-pool, conv-ReLU, global average pool, linear head; 3x16x16 inputs."""

    def __init__(self, classes: int = 3, width: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(width * 4, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def make_net() -> nn.Module:
    """Three classes, width 6."""
    return TinyConvNet()


def make_wide_net() -> nn.Module:
    """Same layers with width 8: its weights do not fit a make_net checkpoint."""
    return TinyConvNet(width=8)


NOT_A_FACTORY = 42


class WarmupShift(SiteCorrection):
    """A runtime correction for the save/load test: a 2-step network warm-up, then v0 + 0.1."""

    presim_steps, scope = 2, "network"

    def adjust(self, site, record, v0):
        return Adjustment(v0=v0 + 0.1)
