"""SpikingJelly monitors under 0.0.0.0.14 (run by test_framework_tools.py in a subprocess, see sj_legacy.py).

Prints one line ``SJ_LEGACY_MONITORS <json>``: for a scalar and a per-channel converted network
run in chunks, what ``monitor.OutputMonitor`` / ``AttributeMonitor('v_seq')`` recorded on the
``IFNode`` modules, compared with ``snnbridge.record`` on the torch backend.
"""

from __future__ import annotations

import json
import logging

import torch

torch.set_num_threads(1)
logging.disable(logging.WARNING)

import snnbridge  # noqa: E402
from helpers import zoo  # noqa: E402


def case(recipe) -> dict:
    from spikingjelly.activation_based import functional, monitor, neuron

    g = torch.Generator().manual_seed(3)
    calib = [torch.rand(8, 3, 16, 16, generator=g) for _ in range(2)]
    x = torch.rand(4, 3, 16, 16, generator=g)
    ann = zoo.TinyConvNet().eval()
    ref = snnbridge.record(snnbridge.convert(ann, recipe, calibration=calib, backend="torch", timesteps=7,
                                             progress=False), x)
    snn = snnbridge.convert(ann, recipe, calibration=calib, backend="spikingjelly", timesteps=7, progress=False)
    snn.time_chunk = 3
    for m in snn.modules():
        if isinstance(m, neuron.IFNode):
            m.store_v_seq = True
    out = monitor.OutputMonitor(snn, neuron.IFNode)
    vseq = monitor.AttributeMonitor("v_seq", False, snn, neuron.IFNode)
    snn(x)
    snn(x)
    functional.reset_net(snn)
    report = {"records_per_node": {}, "spikes_equal": True, "v_equal": True, "covered": True}
    for name, site in snn.sites.items():
        layer = site.neuron
        seen = torch.zeros(ref[name]["spikes"].shape[2], dtype=torch.bool)
        for k, node in enumerate(layer.nodes):
            mod = next(n for n, m in snn.named_modules() if m is node)
            recs, vs = out[mod], vseq[mod]
            report["records_per_node"][mod] = [list(r.shape) for r in recs]
            idx = getattr(layer, layer.groups[k]) if layer.groups else torch.arange(seen.numel())
            seen[idx] = True
            want_s = ref[name]["spikes"].index_select(2, idx)
            want_v = ref[name]["v"].index_select(2, idx)
            report["spikes_equal"] &= all(torch.equal(r, want_s) for r in recs)
            report["v_equal"] &= all(torch.allclose(r, want_v, atol=1e-6) for r in vs)
        report["covered"] &= bool(seen.all())
    report["groups"] = {name: len(site.neuron.nodes) for name, site in snn.sites.items()}
    return report


def main():
    import spikingjelly.activation_based.neuron as sjn

    from snnbridge.adapters.spikingjelly import generation

    print("SJ_LEGACY_MONITORS " + json.dumps({
        "generation": generation(sjn),
        "scalar": case(["maxnorm"]),
        "channel": case([{"robustnorm": {"percentile": 99.0, "channelwise": True}}]),
    }))


if __name__ == "__main__":
    main()
