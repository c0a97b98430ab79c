"""Checks of the spikingjelly adapter under SpikingJelly 0.0.0.0.14 (run by test_spikingjelly_legacy.py).

Runs in a subprocess whose PYTHONPATH puts the 0.0.0.0.14 install first (see sj_legacy.py).
Prints one line ``SJ_LEGACY_REPORT <json>``; the pytest side asserts on it. Every value is
computed here through the public API against the torch reference backend.
"""

from __future__ import annotations

import json
import logging
import sys
import types

import torch

torch.set_num_threads(1)
logging.disable(logging.WARNING)  # 0.0.0.0.14's reset_net/set_backend warn about every non-SpikingJelly module

import snnbridge  # noqa: E402
from snnbridge import BackendError, NeuronSpec, simulate  # noqa: E402


def _counts(spec, x, backend, **kw):
    r = simulate(spec, x, backend=backend, **kw)
    return r.spikes.sum(0).tolist()


def env_report():
    import importlib.metadata as md

    import spikingjelly
    from spikingjelly.activation_based import neuron

    from snnbridge.adapters import spikingjelly as adapter
    return {"file": spikingjelly.__file__, "version": md.version("spikingjelly"),
            "generation": adapter.generation(neuron), "has_activation_aware": hasattr(neuron, "ActivationAwareIFNode")}


def golden_report():
    """G5 (the IF closed form, hand-worked values) on the legacy backend, float64."""
    out = {}
    d = torch.float64
    xs = [-0.2, 0.0, 0.0625, 0.3, 0.5, 0.99, 1.0, 1.7]
    x = torch.tensor(xs, dtype=d).expand(8, -1).contiguous()
    out["theta1_T8_v05"] = _counts(NeuronSpec(threshold=1.0, v0=0.5), x, "spikingjelly")
    xs = [0.24, 0.25, 0.26, 0.75, 1.0, 1.74, 1.76, 3.0]
    x = torch.tensor(xs, dtype=d).expand(4, -1).contiguous()
    out["theta2_T4_v1"] = _counts(NeuronSpec(threshold=2.0, v0=1.0), x, "spikingjelly")
    tie = simulate(NeuronSpec(threshold=1.0, v0=0.5), torch.full((4, 1), 0.125, dtype=d), backend="spikingjelly",
                   return_v=True)
    out["tie_spikes"] = tie.spikes.flatten().tolist()
    out["tie_v_seq"] = tie.v_seq.flatten().tolist()
    x = torch.tensor([0.3, 0.5, 0.99], dtype=d).expand(8, -1).contiguous()
    out["floor_v0"] = _counts(NeuronSpec(threshold=1.0), x, "spikingjelly")
    x = torch.full((8, 1), 0.3, dtype=d)
    shift = simulate(NeuronSpec(threshold=1.0, step_bias=1 / 16), x, backend="spikingjelly")
    half = simulate(NeuronSpec(threshold=1.0, v0=0.5), x, backend="spikingjelly")
    out["shift_cum"] = shift.spikes.flatten().cumsum(0).tolist()
    out["v0_cum"] = half.spikes.flatten().cumsum(0).tolist()
    return out


def random_report():
    """Bit-equality with the torch reference on random float32 data (scalar, per-channel, v0 forms)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, 3, 5, 4, 4, generator=g) * 0.7 + 0.25
    th_c = torch.tensor([0.5, 1.25, 0.8, 0.5, 2.0])  # a repeated value: two channels share one IFNode
    specs = {
        "scalar": NeuronSpec(threshold=0.9),
        "scalar_v0_full": NeuronSpec(threshold=0.9, v0=torch.rand(5, 4, 4, generator=g) * 1.8),
        "channel": NeuronSpec(threshold=th_c, v0=th_c / 2),
        "channel_v0_full": NeuronSpec(threshold=th_c, v0=torch.rand(5, 4, 4, generator=g) * 2.5 - 0.3),
        "channel_bias": NeuronSpec(threshold=th_c, v0=0.1, step_bias=torch.rand(24, 5, generator=g) * 0.1),
    }
    out = {}
    for name, spec in specs.items():
        ref = simulate(spec, x, backend="torch", return_v=True)
        got = simulate(spec, x, backend="spikingjelly", return_v=True)
        out[name] = {"spikes_equal": bool(torch.equal(ref.spikes, got.spikes)),
                     "v_seq_equal": bool(torch.equal(ref.v_seq, got.v_seq)),
                     "v_last_equal": bool(torch.equal(ref.v_last, got.v_last)),
                     "spike_count": int(got.spikes.sum())}
    # single-step mode after functional.set_step_mode gives the same result
    from spikingjelly.activation_based import functional
    factory = snnbridge.make_neuron_factory("spikingjelly")
    layer = factory(specs["channel_v0_full"])
    functional.set_step_mode(layer, "s")
    v = specs["channel_v0_full"].v0_tensor(x[0])
    r = layer.simulate(x, v, return_v=True)
    ref = simulate(specs["channel_v0_full"], x, backend="torch", return_v=True)
    out["step_mode_s"] = {"spikes_equal": bool(torch.equal(ref.spikes, r.spikes)),
                          "v_seq_equal": bool(torch.equal(ref.v_seq, r.v_seq)),
                          "modes": sorted({n.step_mode for n in layer.nodes})}
    out["groups"] = len(factory(specs["channel"]).nodes)
    return out


def resnet_report():
    from spikingjelly.activation_based import functional, neuron

    from helpers.zoo import small_resnet
    model = small_resnet()
    g = torch.Generator().manual_seed(1)
    calib = [torch.rand(16, 3, 8, 8, generator=g) for _ in range(4)]
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = {}
    recipes = {"maxnorm": ["maxnorm"], "robustnorm": [{"robustnorm": {"percentile": 99.9, "channelwise": True}}]}
    for name, recipe in recipes.items():
        runs = {}
        for backend in ("torch", "spikingjelly"):
            snn = snnbridge.convert(model, recipe, calibration=calib, backend=backend, timesteps=32, progress=False)
            with torch.no_grad(), snn.record() as rec:
                y = snn(x)
            runs[backend] = (snn, y, {name: rec[name].spikes for name in snn.sites})
        (_, y_ref, s_ref), (snn, y, s) = runs["torch"], runs["spikingjelly"]
        nodes = [m for m in snn.modules() if isinstance(m, neuron.BaseNode)]
        with torch.no_grad():
            functional.reset_net(snn)
            reset_ok = all(isinstance(n.v, float) and n.v == 0.0 for n in nodes)
            y_again = snn(x)
        out[name] = {
            "sites": sorted(s_ref),
            "spikes_equal": {k: bool(torch.equal(s_ref[k], s[k])) for k in s_ref},
            "spike_total": int(sum(v.sum() for v in s.values())),
            "out_max_diff": float((y - y_ref).abs().max()),
            "out_range": float(y_ref.abs().max()),
            "genuine": bool(nodes) and all(type(n) is neuron.IFNode and n.v_reset is None and n.step_mode == "m"
                                           for n in nodes),
            "n_nodes": len(nodes),
            "reset_net_resets": reset_ok,
            "rerun_equal": bool(torch.equal(y_again, y)),
        }
    return out


def error_report():
    out = {}

    def msg(fn):
        try:
            fn()
        except BackendError as exc:
            return "BackendError: " + str(exc)
        except Exception as exc:  # noqa: BLE001 - reported, asserted on the pytest side
            return f"{type(exc).__name__}: {exc}"
        return None

    x = torch.rand(4, 2, 3)
    spec = NeuronSpec(threshold=1.0)
    out["cupy_here"] = msg(lambda: simulate(spec, x, backend="spikingjelly", backend_options={"kernel": "cupy"}))
    out["triton"] = msg(lambda: simulate(spec, x, backend="spikingjelly", backend_options={"kernel": "triton"}))
    out["torch_kernel_ok"] = msg(lambda: simulate(spec, x, backend="spikingjelly", backend_options={"kernel": "torch"}))
    out["cuda_available"] = torch.cuda.is_available()
    # CuPy importable (a stub, also where SpikingJelly keeps the module it imported) but no CUDA device:
    # the message must blame the device only
    from spikingjelly.activation_based import base, functional
    real, real_base = sys.modules.get("cupy"), base.cupy
    sys.modules["cupy"] = base.cupy = types.ModuleType("cupy")
    try:
        out["cupy_stub_no_cuda"] = msg(lambda: simulate(spec, x, backend="spikingjelly",
                                                        backend_options={"kernel": "cupy"}))
        # functional.set_backend on a layer switches its genuine IFNodes to CuPy; CPU tensors are then refused
        layer = snnbridge.make_neuron_factory("spikingjelly")(NeuronSpec(threshold=torch.tensor([1.0, 0.5])))
        functional.set_backend(layer, "cupy")
        out["set_backend_nodes"] = sorted({n.backend for n in layer.nodes})
        out["set_backend_cpu"] = msg(lambda: layer.simulate(torch.rand(4, 2, 2), torch.zeros(2, 2)))
    finally:
        base.cupy = real_base
        if real is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = real
    return out


def main():
    report = {"env": env_report(), "golden": golden_report(), "random": random_report(), "resnet": resnet_report(),
              "errors": error_report()}
    print("SJ_LEGACY_REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
