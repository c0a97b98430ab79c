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
``make_resnet20()`` builds the CIFAR ResNet-20 (16-32-64, 3 basic blocks per stage) of the benchmark suite.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: default stage widths; an int is one conv-BN-pool-ReLU stage, a tuple several convs in one stage
#: (pool after the last conv of the stage)
DEFAULT_WIDTHS: tuple = (32, 64, 128)


class CifarCNN(nn.Module):
    """VGG-style stages ``conv3x3 -> BN [-> ReLU -> conv3x3 -> BN ...] -> AvgPool2d(2) -> ReLU``, a Linear head."""

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


class BasicBlock(nn.Module):
    """``conv3x3-BN-ReLU-conv3x3-BN`` plus the shortcut, then ReLU (He et al. 2016, CIFAR variant).

    A stride or width change uses a 1x1 conv + BN projection (option B): a plain linear path, which
    converts like any other conv, where option A's zero-padded slicing would be an extra graph op.
    Every ReLU is its own module, so each is one activation site (SpikingJelly converts only
    ``nn.ReLU`` modules).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (Sec. 4.2): a 3x3 stem, three stages of basic blocks, global
    average pooling, a Linear head. ``blocks=3`` with widths 16-32-64 is ResNet-20 (6n + 2 layers)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: int = 3, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(c, w, stride=2 if i > 0 and j == 0 else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.pool(self.layers(self.relu(self.bn(self.conv(x))))).flatten(1))


def make_resnet20(num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), blocks: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (untrained). ``examples.cifar10.model:make_resnet20`` on the command line."""
    return CifarResNet(widths=widths, blocks=blocks, num_classes=num_classes)
