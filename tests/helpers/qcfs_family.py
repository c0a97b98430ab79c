"""Helpers for the QCFS-family tests: small prepared networks and independent reference simulators.

The reference simulators restate the official evaluation procedures - COS layer by layer over
the whole time axis (hzc1208/ANN2SNN_COS, ``MPLayer``) and SRP step by step over the whole
network (hzc1208/ANN2SNN_SRP, ``mp_test``) - directly in torch, in units of the threshold
(inputs divided by theta, threshold 1),
without any snnbridge code, so the plugins' runtime results can be checked against them.
"""

from __future__ import annotations

import torch
from torch import nn

import snnbridge
from snnbridge.plugins.qcfs import QCFS

BACKENDS = snnbridge.get_registry().names("backend")


def set_lambdas(prepared: nn.Module, lams) -> list[QCFS]:
    mods = [m for m in prepared.modules() if isinstance(m, QCFS)]
    assert len(mods) == len(lams)
    with torch.no_grad():
        for m, lam in zip(mods, lams):
            m.lam.fill_(float(lam))
    return mods


def one_site(lam: float = 1.0, levels: int = 4, shift: float = 0.5) -> nn.Module:
    """A network that is one QCFS site: the site's input is exactly the network's input ``[B, F]``."""
    prepared = snnbridge.prepare(nn.Sequential(nn.ReLU()), [{"qcfs": {"levels": levels, "shift": shift}}])
    set_lambdas(prepared, [lam])
    return prepared.eval()


def qcfs_mlp(widths=(6, 12, 10, 4), lams=(2.0, 0.5), levels: int = 4, seed: int = 0, shift: float = 0.5):
    """Linear -> QCFS -> ... -> Linear with the given lambdas (powers of 2 keep theta-unit scaling exact)."""
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    prepared = snnbridge.prepare(nn.Sequential(*layers), [{"qcfs": {"levels": levels, "shift": shift}}])
    set_lambdas(prepared, lams)
    return prepared.eval()


def blocks_of(prepared: nn.Module):
    """(linears, lambdas) of a :func:`qcfs_mlp` in forward order."""
    linears = [m for m in prepared.modules() if isinstance(m, nn.Linear)]
    lams = [float(m.lam.detach()) for m in prepared.modules() if isinstance(m, QCFS)]
    return linears, lams


# -- reference simulators (threshold units) ------------------------------------------------------------


def if_run(x_seq: torch.Tensor, v0: torch.Tensor):
    """IF neurons with threshold 1, >= rule, soft reset: (spikes, v after each step)."""
    v = v0.clone()
    spikes, vs = [], []
    for t in range(x_seq.shape[0]):
        v = v + x_seq[t]
        s = (v >= 1.0).to(v.dtype)
        v = v - s
        spikes.append(s)
        vs.append(v.clone())
    return torch.stack(spikes), torch.stack(vs)


def official_cos_shift(S: torch.Tensor, V: torch.Tensor, delta=None) -> torch.Tensor:
    """The official COS rule per neuron (threshold units), with the shift of all-spiking neurons clamped to 1.

    ``delta``: shift already applied (later rounds test the residual relative to the shifted start)."""
    n = S.sum(0)
    v_end = V[-1] if delta is None else V[-1] - delta
    out = torch.zeros_like(v_end)
    flat_S, flat_V = S.reshape(S.shape[0], -1), V.reshape(V.shape[0], -1)
    flat_out, flat_n, flat_end = out.view(-1), n.reshape(-1), v_end.reshape(-1)
    for j in range(flat_out.numel()):
        if flat_end[j] < 0 and flat_n[j] >= 1:
            m_min = min(float(flat_V[t, j]) + 1.0 for t in range(S.shape[0]) if flat_S[t, j] > 0)
            shift = m_min - 0.999 if m_min - 0.999 > 1 else 1.0
            flat_out[j] = -shift
        elif flat_end[j] >= 1:
            silent = [float(flat_V[t, j]) for t in range(S.shape[0]) if flat_S[t, j] == 0]
            if not silent:
                shift = 1.0  # clamp (official: 1.001 + 1000)
            else:
                v_max = max(silent)
                shift = 1.001 - v_max if 1.001 - v_max > 1 else 1.0
            flat_out[j] = shift
    return out


@torch.no_grad()
def reference_cos(prepared, x: torch.Tensor, T: int, rho: int, rounds: int = 1) -> torch.Tensor:
    """Official COS evaluation: each layer pre-simulates rho steps of its input, shifts v0, reruns T steps.

    Returns the running mean of the output ``[T, B, K]``.
    """
    linears, lams = blocks_of(prepared)
    seq = x.unsqueeze(0).expand(T, *x.shape)
    for lin, lam in zip(linears[:-1], lams):
        cur = lin(seq) / lam
        v0 = torch.full_like(cur[0], 0.5)
        for _ in range(rounds):
            S, V = if_run(cur[:rho], v0)
            v0 = v0 + official_cos_shift(S, V, v0 - 0.5)
        S, _ = if_run(cur, v0)
        seq = S * lam
    out = linears[-1](seq)
    return out.cumsum(0) / torch.arange(1, T + 1, dtype=out.dtype).view(-1, 1, 1)


@torch.no_grad()
def reference_srp(prepared, x: torch.Tensor, T: int, tau: int, cos_rho: int | None = None,
                  mask_threshold: float = 1e-3) -> torch.Tensor:
    """Official SRP evaluation, step by step over the whole network; with ``cos_rho`` also COS's v0 shift
    decided from the same warm-up (the stacked semantics: the warm-up lasts ``max(tau, cos_rho)`` steps, SRP's
    masks come from the membrane after step ``tau``, COS's shift from the first ``cos_rho`` steps).
    Returns the running mean over the T counted steps."""
    linears, lams = blocks_of(prepared)
    warmup = max(tau, cos_rho or 0)
    first = linears[0](x)
    v = [None] * len(lams)
    rec_S = [[] for _ in lams]
    rec_V = [[] for _ in lams]
    counted = []
    for t in range(warmup + T):
        if t == warmup:  # end of the warm-up: masks, restart every neuron from the base v0 (+ COS shift)
            masks = [(V[tau - 1] > mask_threshold).to(x.dtype) for V in rec_V]
            v = [torch.full_like(vi, 0.5) for vi in v]
            if cos_rho is not None:
                v = [vi + official_cos_shift(torch.stack(S[:cos_rho]), torch.stack(V[:cos_rho]))
                     for vi, S, V in zip(v, rec_S, rec_V)]
        h = None
        for i, (lin, lam) in enumerate(zip(linears[:-1], lams)):
            cur = (first if i == 0 else lin(h)) / lam
            if v[i] is None:
                v[i] = torch.full_like(cur, 0.5)
            v[i] = v[i] + cur
            s = (v[i] >= 1.0).to(cur.dtype)
            v[i] = v[i] - s
            if t < warmup:
                rec_S[i].append(s)
                rec_V[i].append(v[i].clone())
                h = s * lam
            else:
                h = s * lam * masks[i]
        if t >= warmup:
            counted.append(linears[-1](h))
    out = torch.stack(counted)
    return out.cumsum(0) / torch.arange(1, T + 1, dtype=out.dtype).view(-1, 1, 1)


def spike_counts(snn, x, T=None):
    """Per-step outputs of the last layer and the spikes ``[steps, B, ...]`` of every site of ``snn`` for ``x``."""
    with snn.record() as rec:
        out = snn.run(x, T)
    return out, {name: rec[name].spikes for name in snn.sites}
