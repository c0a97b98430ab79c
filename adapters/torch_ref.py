"""The plain-torch reference backend (``backend="torch"``).

A direct transcription of the IF neuron of :mod:`snnbridge.spec`: no framework, no fused
kernel, so it is the yardstick the other adapters are tested against.
"""

from __future__ import annotations

import torch

from snnbridge import NeuronLayer, PluginInfo, SimResult, hookimpl

NAME = "torch"


class TorchIFLayer(NeuronLayer):
    """Integrate-and-fire with reset by subtraction, fire on ``v >= threshold``."""

    backend_name = NAME

    def simulate(self, x_seq: torch.Tensor, v_init: torch.Tensor, return_v: bool = False) -> SimResult:
        th = self.spec.threshold_tensor(x_seq[0], 1)
        if isinstance(th, float):  # a 0-d tensor of the input's dtype: float64 runs compare exactly
            th = torch.tensor(th, dtype=x_seq.dtype, device=x_seq.device)
        # m = v + x; s = m >= th; v = m - th * s, written as: out = th * s (the weighted spikes the
        # runtime passes on, computed here so nobody multiplies the whole sequence again), v -= out.
        # The first step is out of place (v_init is the caller's), the rest in place on that copy.
        out = torch.empty_like(x_seq)
        fire = torch.empty(x_seq.shape[1:], dtype=torch.bool, device=x_seq.device)
        v_seq = torch.empty_like(x_seq) if return_v else None
        v = v_init + x_seq[0]
        for t in range(x_seq.shape[0]):
            if t:
                v.add_(x_seq[t])
            torch.ge(v, th, out=fire)
            o = out[t]
            torch.mul(fire, th, out=o)
            v.sub_(o)
            if v_seq is not None:
                v_seq[t] = v
        return SimResult(output=out, v_last=v, v_seq=v_seq)


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="plain-torch reference IF neurons (soft reset, v >= threshold)", kind="backend",
                      provides=("backend",))


@hookimpl
def snnbridge_make_neuron(spec, options):
    return TorchIFLayer(spec)
