"""snnTorch's way on a converted model: ``spk_rec`` / ``mem_rec`` from forward hooks on the ``Leaky``
neurons, ``snntorch.functional`` losses and accuracy on ``snn.steps`` / ``snn.sweep``, and resets.

A random-weight CNN (no downloads, CPU, a few seconds)::

    .venv/bin/python examples/frameworks/snntorch_tools.py
"""

from __future__ import annotations

import snntorch
import snntorch.functional as SF
import snntorch.utils
import torch
from torch import nn

import snnbridge


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
    images = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        labels = ann(images).argmax(1)  # random weights: the ANN's own predictions serve as labels
    snn = snnbridge.convert(ann, [{"robustnorm": {"percentile": 99.9}}], calibration=calibration, backend="snntorch",
                            timesteps=timesteps, progress=False)
    snn.time_chunk = 4  # long runs are chunked; the hooks still see T steps, one call each

    # 1. spk_rec / mem_rec the snnTorch way: a forward hook on each genuine snntorch.Leaky
    spk_rec = {site: [] for site in snn.sites}
    mem_rec = {site: [] for site in snn.sites}
    hooks = []
    for site, s in snn.sites.items():
        assert isinstance(s.neuron.leaky, snntorch.Leaky)

        def keep(module, args, out, site=site):
            spk, mem = out  # what spk, mem = leaky(x_t, mem) returns
            spk_rec[site].append(spk)
            mem_rec[site].append(mem)

        hooks.append(s.neuron.leaky.register_forward_hook(keep))
    with torch.no_grad():
        snn(images)
    for h in hooks:
        h.remove()
    ours = snnbridge.record(snn, images, what=("spikes", "v"))  # the same, on any backend
    for site in snn.sites:
        spk, mem = torch.stack(spk_rec[site]), torch.stack(mem_rec[site])  # [T, B, C, H, W]
        assert torch.equal(spk, ours[site]["spikes"])
        print(f"{site}: spk_rec {tuple(spk.shape)}, firing rate {spk.mean():.3f}, mem in [{mem.min():.2f}, "
              f"{mem.max():.2f}]")

    # 2. snntorch.functional on the per-step outputs: snn.steps(x) is [T, B, classes] (the counted steps)
    with torch.no_grad():
        out = snn.steps(images)
        curve = snn.sweep(images)  # [T, B, classes]: the decoded output after 1..T steps, from one run
    loss = SF.ce_rate_loss()(out, labels)
    acc = SF.accuracy_rate(out, labels)
    acc_vs_t = [float(SF.accuracy_rate(curve[t - 1:t], labels)) for t in range(1, timesteps + 1)]
    print(f"ce_rate_loss {loss.item():.3f}, accuracy_rate {acc:.3f} (agreement with the ANN)")
    print("accuracy after t steps:", " ".join(f"{a:.2f}" for a in acc_vs_t))

    # 3. resets: none is needed (every run starts from the initial state); snntorch.utils.reset(snn) finds no
    #    Leaky among snn's direct children and does nothing; leaky.reset_mem() zeroes one neuron's kept mem
    before = snn(images)
    snntorch.utils.reset(snn)
    for s in snn.sites.values():
        s.neuron.leaky.reset_mem()
    assert torch.equal(snn(images), before)
    return {"acc": float(acc), "acc_vs_t": acc_vs_t, "loss": loss.item(), "shapes": {
        site: tuple(torch.stack(spk_rec[site]).shape) for site in snn.sites}}


if __name__ == "__main__":
    main()
