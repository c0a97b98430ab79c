"""Shared fixtures: small networks and calibration data built in the test (no downloads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


class SmallResNet(nn.Module):
    """conv-BN-ReLU, a residual block (functional relu calls), avg-pool and a linear head."""

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


@pytest.fixture
def small_resnet():
    torch.manual_seed(0)
    return randomize_bn(SmallResNet()).eval()


@pytest.fixture
def calib_batches():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(16, 3, 8, 8, generator=g) for _ in range(4)]


@pytest.fixture
def test_input():
    g = torch.Generator().manual_seed(2)
    return torch.rand(6, 3, 8, 8, generator=g)
