"""SpikingJelly's own tools on a converted model: monitors, firing rates, ``functional.reset_net``.

A random-weight CNN (no downloads, CPU, a few seconds)::

    .venv/bin/python examples/frameworks/spikingjelly_monitors.py

The model runs in time chunks of 4 steps; each monitor still gets one ``[T, B, ...]`` record
per neuron module per forward (docs/frameworks.md explains why and which classes to monitor).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, monitor, neuron
from torch import nn

import snnbridge

#: the neuron classes of a converted model on SpikingJelly 2: IFNode for a layer-wise threshold,
#: ActivationAwareIFNode for per-channel thresholds (it is not a neuron.BaseNode)
NEURONS = (neuron.IFNode, neuron.ActivationAwareIFNode)


class SmallCNN(nn.Module):
    """conv-BN-ReLU-pool twice and a linear head, for 3x32x32 inputs; its sites are ``relu1``, ``relu2``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.pool, self.head = nn.AvgPool2d(2), nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        return self.head(x.flatten(1))


def main(timesteps: int = 16) -> dict:
    torch.manual_seed(0)
    ann = SmallCNN().eval()
    calibration = [torch.rand(32, 3, 32, 32) for _ in range(2)]
    images = torch.rand(8, 3, 32, 32)
    summary = {}
    for label, recipe in [("layer-wise thresholds", ["maxnorm"]),
                          ("per-channel thresholds", [{"robustnorm": {"percentile": 99.9, "channelwise": True}}])]:
        snn = snnbridge.convert(ann, recipe, calibration=calibration, backend="spikingjelly", timesteps=timesteps,
                                progress=False)
        snn.time_chunk = 4  # long runs are chunked; monitors do not see the chunks
        for m in snn.modules():
            if isinstance(m, NEURONS):
                m.store_v_seq = True  # what AttributeMonitor("v_seq") reads, as in any SpikingJelly network
        with monitor.OutputMonitor(snn, NEURONS) as spikes, \
                monitor.OutputMonitor(snn, NEURONS, function_on_output=lambda s: s.mean(0)) as rates, \
                monitor.AttributeMonitor("v_seq", False, snn, NEURONS) as volts, \
                monitor.InputMonitor(snn, NEURONS) as inputs:
            snn(images)
        ours = snnbridge.record(snn, images, what=("spikes", "v"))  # the same, on any backend
        print(f"{label} ({recipe}), T = {timesteps}:")
        module_name = {m: n for n, m in snn.named_modules()}
        for site, s in snn.sites.items():
            name = module_name[s.neuron.nodes[0]]  # e.g. graph_module.snnsite_<site>.neuron.nodes.0
            (spk,), (rate,), (v,), (x,) = spikes[name], rates[name], volts[name], inputs[name]
            assert torch.equal(spk, ours[site]["spikes"]) and torch.equal(v, ours[site]["v"])
            print(f"  {site:12s} {type(s.neuron.nodes[0]).__name__:22s} spikes {tuple(spk.shape)}  "
                  f"mean rate {rate.mean():.3f}  v in [{v.min():.2f}, {v.max():.2f}]  input {tuple(x.shape)}")
            summary[(label, site)] = tuple(spk.shape)
        functional.reset_net(snn)  # resets the SpikingJelly neurons; the model also resets itself every run
    return summary


if __name__ == "__main__":
    main()
