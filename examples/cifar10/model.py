"""A small VGG-style CNN for CIFAR-10 that trains in minutes on a CPU and converts well.

Blocks are ``conv3x3 -> BatchNorm -> AvgPool2d(2) -> ReLU``. Average pooling is linear,
so placing it before the ReLU (the activation that becomes spiking neurons) keeps the
network conversion-friendly — no max-pooling, no bias-free tricks — and puts each layer of
neurons at the pooled resolution: 4x fewer neurons to simulate for every time step than
``conv -> BN -> ReLU -> pool``, which matters for the SNN's cost on a CPU. BatchNorm is folded
into the convolutions by the converter.

The default ``make_model()`` (widths 32-64-128, 1 conv per stage):

    32x32x3 -> conv32 -> pool -> 16x16x32 -> conv64 -> pool -> 8x8x64 -> conv128 -> pool -> 4x4x128
    -> flatten -> Linear(2048, 10)

Use it on the command line as ``examples.cifar10.model:make_model`` (run from the repository root).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

#: default stage widths; an int is one conv-BN-pool-ReLU stage, a tuple several convs in one stage
#: (pool after the last conv of the stage)
DEFAULT_WIDTHS: tuple = (32, 64, 128)


class CifarCNN(nn.Module):
    """VGG-style stages of ``conv3x3 -> BN [-> ReLU -> conv3x3 -> BN ...] -> AvgPool2d(2) -> ReLU``, then a Linear head."""

    def __init__(self, widths: Sequence = DEFAULT_WIDTHS, num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for stage in widths:
            convs = list(stage) if isinstance(stage, (tuple, list)) else [stage]
            for i, w in enumerate(convs):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)]
                if i < len(convs) - 1:
                    layers.append(nn.ReLU(inplace=True))
                c = w
            layers += [nn.AvgPool2d(2), nn.ReLU(inplace=True)]
            size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * size * size, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def make_model(num_classes: int = 10, widths: Sequence = DEFAULT_WIDTHS) -> CifarCNN:
    """The example's CNN (untrained). ``examples.cifar10.model:make_model`` on the command line."""
    return CifarCNN(widths=widths, num_classes=num_classes)
