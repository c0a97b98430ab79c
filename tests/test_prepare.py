"""prepare(): training activations per call site, claimed as sites at conversion, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snnbridge
from snnbridge import MissingRequirementError, PluginInfo, hookimpl


class TrainableClip(nn.Module):
    """A test activation: clip to a trainable upper bound."""

    def __init__(self, bound: float):
        super().__init__()
        self.bound = nn.Parameter(torch.tensor(bound))

    def forward(self, x):
        return torch.minimum(torch.relu(x), self.bound)


class ClipPlugin:
    name = "testclip"

    @hookimpl
    def snnbridge_plugin_info(self):
        return PluginInfo(summary="trainable clip (test)", provides=("activation", "threshold"))

    @hookimpl
    def snnbridge_add_options(self):
        return [snnbridge.Option("bound", float, 2.0, "initial bound")]

    @hookimpl
    def snnbridge_replace_activation(self, site, module, options):
        return TrainableClip(options["bound"]) if site.kind == "relu" else None

    @hookimpl
    def snnbridge_claim_module(self, module):
        if isinstance(module, TrainableClip):
            return type("Claim", (), {"kind": "testclip", "clip_max": None})()
        return None

    @hookimpl
    def snnbridge_estimate_threshold(self, ctx):
        return {n: float(ctx.site_module(n).activation.bound) for n in ctx.sites}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))  # one ReLU module, two call sites


def test_prepare_replaces_each_call_site_and_round_trips_through_a_checkpoint(tmp_path):
    plugin = ClipPlugin()
    torch.manual_seed(0)
    model = Net()
    prepared = snnbridge.prepare(model, [plugin])
    clips = [m for m in prepared.modules() if isinstance(m, TrainableClip)]
    assert len(clips) == 2 and clips[0] is not clips[1]  # two independent trainable bounds
    assert not any(isinstance(m, TrainableClip) for m in model.modules())  # the user's model is untouched
    assert prepared.training == model.training
    # train a few steps: the bounds move
    opt = torch.optim.SGD(prepared.parameters(), lr=0.5)
    x, y = torch.randn(64, 4) * 3, torch.randn(64, 2)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(prepared(x), y).backward()
        opt.step()
    bounds = [float(c.bound.detach()) for c in clips]
    assert bounds != [2.0, 2.0]
    torch.save(prepared.state_dict(), tmp_path / "ckpt.pt")
    again = snnbridge.prepare(Net(), [plugin])
    again.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    again.eval()
    snn = snnbridge.convert(again, [plugin], example_input=x[:2], timesteps=256, progress=False)
    assert [s.info.kind for s in snn.sites.values()] == ["testclip", "testclip"]
    assert [snn.specs[n].threshold for n in snn.specs] == pytest.approx(bounds)
    with torch.no_grad():
        ann = again(x)
        err = (snn(x) - ann).abs().max() / (ann.max() - ann.min())
    assert err < 0.02


def test_prepare_needs_an_activation_plugin():
    with pytest.raises(MissingRequirementError, match=r"no plugin of the recipe \['maxnorm'\] replaces activations"):
        snnbridge.prepare(Net(), ["maxnorm"])
