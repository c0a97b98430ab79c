"""The per-layer conversion report measures what it says: clipping vs quantization error, firing rates."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import snnbridge
from helpers.plugins import fixed_threshold


def _one_site_net():
    net = nn.Sequential(nn.ReLU(), nn.Linear(4, 1)).eval()
    return net


def test_clipping_and_quantization_errors_are_separated(tmp_path):
    x = torch.tensor([[0.25, 0.5, 1.0, 3.0]])  # one sample, four neurons; threshold 1
    snn = snnbridge.convert(_one_site_net(), [fixed_threshold("one", 1.0)], example_input=x, timesteps=4,
                            progress=False)
    rep = snnbridge.layer_report(_one_site_net(), snn, x)
    (site,) = rep["sites"]
    # v0 = 0, T = 4: rates floor(x*4)/4 clipped at 1 -> 0.25, 0.5, 1.0, 1.0
    assert site["clip_error"] == pytest.approx((3.0 - 1.0) / 4)  # only the neuron driven at 3.0 clips
    assert site["quant_error"] == pytest.approx(0.0, abs=1e-6)
    assert site["error"] == pytest.approx(0.5)
    assert site["firing_rate"] == pytest.approx((1 + 2 + 4 + 4) / 16)
    assert site["silent"] == 0.0
    snn3 = snnbridge.convert(_one_site_net(), [fixed_threshold("one", 1.0)], example_input=x, timesteps=3,
                             progress=False)
    site3 = snnbridge.layer_report(_one_site_net(), snn3, x)["sites"][0]
    # T = 3: 0.25 -> 0, 0.5 -> 1/3: flooring error appears, clipping error does not change
    assert site3["quant_error"] == pytest.approx((0.25 + (0.5 - 1 / 3)) / 4)
    assert site3["clip_error"] == pytest.approx(site["clip_error"])
    json_path, png_path = snnbridge.plot_layer_report(rep, tmp_path / "layers")
    assert json.loads(json_path.read_text())["sites"][0]["site"] == site["site"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_covers_every_site_in_order(small_resnet, calib_batches, test_input):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=32, progress=False)
    rep = snnbridge.layer_report(small_resnet, snn, test_input)
    assert [s["site"] for s in rep["sites"]] == list(snn.sites)
    assert rep["steps_run"] == 32
    assert all(s["clip_error"] == 0 for s in rep["sites"][:1])  # max-norm: nothing above the threshold
    assert all(0 < s["firing_rate"] < 1 for s in rep["sites"])
