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
        th = self.spec.threshold
        per_channel = not isinstance(th, float)
        if per_channel:
            th = self.spec.threshold_tensor(x_seq[0], 1)
        # in place on a private copy of the state: the same IEEE operations as
        # m = v + x; s = m >= th; v = m - th * s, without allocating per step
        v = v_init.clone()
        spikes = torch.empty_like(x_seq)
        v_seq = torch.empty_like(x_seq) if return_v else None
        for t in range(x_seq.shape[0]):
            v.add_(x_seq[t])
            s = spikes[t]
            s.copy_(v >= th)
            if per_channel:
                v.addcmul_(s, th, value=-1.0)
            else:
                v.add_(s, alpha=-th)
            if v_seq is not None:
                v_seq[t] = v
        return SimResult(spikes=spikes, v_last=v, v_seq=v_seq)


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="plain-torch reference IF neurons (soft reset, v >= threshold)", kind="backend",
                      provides=("backend",))


@hookimpl
def snnbridge_make_neuron(spec, options):
    return TorchIFLayer(spec)
