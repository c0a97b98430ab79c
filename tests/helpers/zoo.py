"""The test suite's model zoo: every network reused by several tests, built from seeds (no downloads).

``conftest.py`` exposes the common ones as fixtures; the CLI tests build them by name
(``--model helpers.zoo:make_net``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallResNet(nn.Module):
    """conv-BN-ReLU, a residual block (functional relu calls), avg-pool and a linear head; 3x8x8 inputs."""

    def __init__(self, channels: int = 8, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(channels)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        y = torch.relu(self.bn2(self.conv2(x)))
        y = self.bn3(self.conv3(y))
        x = F.relu(y + x)
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(torch.flatten(x, 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def small_resnet() -> nn.Module:
    """SmallResNet with seed-0 weights and randomized BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    return randomize_bn(SmallResNet()).eval()


class BNNet(nn.Module):
    """conv-BN-ReLU-avgpool, a residual block, conv-BN-ReLU-maxpool (pre-neuron max pooling), FC-BN-ReLU, FC.

    3x8x8 inputs, 4 classes; trained in :mod:`helpers.data_driven`.
    """

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv4, self.bn4 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc1, self.bn5 = nn.Linear(12 * 2 * 2, 16), nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, classes)
        self.pool = nn.AvgPool2d(2)
        self.mp = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        y = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(y)) + x)
        x = self.mp(F.relu(self.bn4(self.conv4(x))))
        x = F.relu(self.bn5(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class TinyConvNet(nn.Module):
    """conv-BN-ReLU, avg-pool, conv-ReLU, global average pool, linear head; 3x16x16 inputs."""

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
    """TinyConvNet: three classes, width 6 (the CLI tests' ``--model``)."""
    return TinyConvNet()


def make_wide_net() -> nn.Module:
    """Same layers with width 8: its weights do not fit a make_net checkpoint."""
    return TinyConvNet(width=8)


NOT_A_FACTORY = 42


def relu_head(features: int, out: int = 1) -> nn.Module:
    """``ReLU -> Linear``: one site whose input is the network's input (hand-worked values go straight in)."""
    return nn.Sequential(nn.ReLU(), nn.Linear(features, out)).eval()


def mlp(*widths: int, seed: int | None = 0) -> nn.Module:
    """``Linear -> ReLU -> ... -> Linear`` with the given layer widths, eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
