"""The time layout shared by the modules of one converted model during a run.

A run of ``warmup + T`` steps is processed in chunks of ``n`` steps; stateless layers see
each chunk as one merged ``[n*B, ...]`` tensor. :class:`RunState` tells every module of the
model where the current chunk lies; :class:`TimeExpand` broadcasts a static ``[B, ...]``
value (the part of the network before the first neurons runs once) to the merged layout.
"""

from __future__ import annotations

import torch
from torch import nn


class RunState:
    """Where the current chunk lies: ``n`` steps from absolute step ``t0`` of a batch of ``batch``.

    ``warmup``: the uncounted network pre-simulation steps of this run; ``sequence``: the
    input is a ``[T, B, ...]`` sequence (every value is temporal, nothing is broadcast);
    ``recordings``: the active :class:`~snnbridge.recording.Recording` objects (never pickled).
    """

    def __init__(self):
        self.n = 1
        self.t0 = 0
        self.batch = 0
        self.warmup = 0
        #: absolute step where a run's returned steps end; later steps only feed the sites' look-ahead
        #: (a run of T counted steps shorter than the look-ahead; None: every step is returned)
        self.stop: int | None = None
        self.sequence = False
        self.recordings: list = []
        #: ``fn(site, sequence)`` of a :meth:`~snnbridge.runtime.SpikingModel.run` with ``before_fire`` (never pickled)
        self.before_fire = None
        #: the thread running the model now (None when idle) and its nesting depth
        self.owner: int | None = None
        self.depth = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["recordings"], state["before_fire"] = [], None
        state["owner"], state["depth"] = None, 0  # a copy is idle, whatever the original is doing
        return state


class TimeExpand(nn.Module):
    """Broadcast a static ``[B, ...]`` tensor to the merged ``[n*B, ...]`` layout of the current chunk."""

    def __init__(self, state: RunState):
        super().__init__()
        self._state = state

    def forward(self, x):
        if self._state.sequence or not isinstance(x, torch.Tensor) or x.dim() == 0:
            return x  # a sequence input is already in the merged layout
        n = self._state.n
        return x.unsqueeze(0).expand(n, *x.shape).reshape(n * x.shape[0], *x.shape[1:])
