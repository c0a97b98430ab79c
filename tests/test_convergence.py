"""As T grows, the SNN output of a clip-ReLU network converges to the ANN's."""

from __future__ import annotations

import torch
from torch import nn

import snnbridge


def test_clip_relu_network_converges_to_the_ann():
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(0.0, 1.0), nn.AvgPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 16), nn.Hardtanh(0.0, 1.0), nn.Linear(16, 4)).eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.rand(32, 3, 8, 8, generator=g) for _ in range(4)]
    snn = snnbridge.convert(ann, ["maxnorm"], calibration=data, timesteps=512, progress=False)
    x = data[0][:16]
    with torch.no_grad():
        target = ann(x)
        sweep = snn.sweep(x)
    scale = (target.max() - target.min()).item()
    err = {t: ((sweep[t - 1] - target).abs().max().item() / scale) for t in (8, 32, 128, 512)}
    assert err[512] < 0.01, err  # well under 1% of the output range
    assert err[8] > err[32] > err[128] > err[512], err  # and it improves steadily with T
