"""Observers: small objects that record one statistic of a site's activations, as torch.ao's do.

``observe(x)`` records a batch, ``compute()`` decides. A plugin passes an observer to
:meth:`snnbridge.context.ConversionContext.collect`, which runs the calibration batches
through the reference ANN once, feeds a fresh copy of the observer at every site, and caches
the results by the observer's :meth:`~Observer.key`, so plugins asking for the same
statistic share one pass::

    maxima = ctx.collect(MaxObserver(channel_axis=1))            # {site: [C]}
    p999 = ctx.collect(PercentileObserver(99.9))                   # {site: 0-d tensor}

``channel_axis``: ``None`` for one statistic per site (a 0-d result), or the channel
dimension of the activation (``1`` for ``[B, C, ...]``; the features of a ``Linear``) for
one per channel (``[C]``). Subclass :class:`Observer` (or :class:`EMAObserver` for an
exponential moving average of a per-batch statistic) for new statistics; ``key`` must name
everything that changes the result.

Across processes (``torch.distributed``, see :mod:`snnbridge.distributed`): each rank observes
its own shard and ``ctx.collect`` calls :meth:`Observer.reduce` on every rank before
``compute``, so every rank computes the statistic of the union of the shards (maxima by
all-reduce MAX, means by SUM of sums and counts, reservoir samples merged). An EMA of
per-batch statistics is order-dependent: there, batch i is the union of every rank's batch i
(:meth:`EMAObserver.union_statistic`). A new observer defines ``reduce`` to run distributed.
"""

from __future__ import annotations

import copy
import math

import torch

from . import channels, distributed


class Observer:
    """Base class: one statistic of one site's activations over the calibration batches.

    ``generator``: the random generator of stochastic observers; ``ctx.collect`` gives every
    observer of one pass the same generator, seeded by ``convert(seed=...)``.
    """

    def __init__(self, channel_axis: int | None = None):
        if channel_axis is not None and (isinstance(channel_axis, bool) or not isinstance(channel_axis, int)
                                         or channel_axis < 1):
            raise ValueError(f"channel_axis must be None or a dimension >= 1 (0 is the batch), got {channel_axis!r}")
        self.channel_axis = channel_axis
        self.generator: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything observed."""

    def fresh(self) -> Observer:
        """An empty copy with the same settings (one per site)."""
        new = copy.copy(self)
        new.reset()
        return new

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as float ``[C, N]`` rows (``[1, N]`` when layer-wise)."""
        return channels.rows(x.detach().float(), self.channel_axis)

    def observe(self, x: torch.Tensor) -> None:
        """Record one batch of the site's activations (``[B, C, ...]``)."""
        raise NotImplementedError

    def compute(self) -> torch.Tensor:
        """The statistic: ``[C]`` per channel, a 0-d tensor layer-wise (see subclasses)."""
        raise NotImplementedError

    def reduce(self) -> None:
        """Merge this observer's state across the ranks of a process group, in place (every rank calls it).

        Afterwards every rank holds the state of one observer that saw every rank's batches.
        ``ctx.collect`` calls it only when a process group of more than one rank is active.
        """
        raise NotImplementedError(f"{type(self).__name__} has no reduce(), so it cannot merge its statistic across "
                                  "the ranks of a distributed conversion; define reduce() (see "
                                  "snnbridge.observers), or convert in one process.")

    def key(self) -> tuple:
        """Everything that determines the result (for caching across plugins)."""
        return (type(self).__module__, type(self).__qualname__, self.channel_axis)

    @property
    def label(self) -> str:
        """A short name for progress bars: the class name without "Observer", lower case."""
        return type(self).__name__.removesuffix("Observer").lower() or "statistic"

    def _per_site(self, value: torch.Tensor | None) -> torch.Tensor:
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.compute() before any observe(): it has seen no batch")
        return value if self.channel_axis is not None else value[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.key()[2:]}"


class MaxObserver(Observer):
    """The true maximum over every calibration activation (never a running average)."""

    def reset(self):
        self.value = None

    def observe(self, x):
        m = self.rows(x).amax(dim=1)
        self.value = m if self.value is None else torch.maximum(self.value, m)

    def compute(self):
        return self._per_site(self.value)

    def reduce(self):
        value = self._per_site(self.value) if self.value is None else self.value  # None: the "seen no batch" error
        self.value = distributed.all_max(value)


class MeanObserver(Observer):
    """The mean activation (accumulated in float64).

    ``per_position=True`` averages over the batch only and keeps the activation shape
    (``[C, ...]``); ``channel_axis`` is then ignored.
    """

    def __init__(self, channel_axis: int | None = None, per_position: bool = False):
        self.per_position = bool(per_position)
        super().__init__(channel_axis)

    def reset(self):
        self.total, self.count = None, 0

    def observe(self, x):
        if self.per_position:
            s, c = x.detach().double().sum(0), x.shape[0]
        else:
            v = self.rows(x)
            s, c = v.sum(dim=1, dtype=torch.float64), v.shape[1]
        self.total = s if self.total is None else self.total + s
        self.count += c

    def compute(self):
        if self.total is None:
            return self._per_site(None)  # the "seen no batch" error
        m = (self.total / self.count).float()
        return m if self.per_position else self._per_site(m)

    def reduce(self):
        total = self._per_site(None) if self.total is None else self.total  # None: the "seen no batch" error
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=total.device)
        packed = distributed.all_sum(torch.cat([total.flatten(), count]))
        self.total, self.count = packed[:-1].view(total.shape), int(packed[-1])

    def key(self):
        return super().key() + (self.per_position,)


class EMAObserver(Observer):
    """Exponential moving average of a per-batch statistic: ``ema <- (1 - momentum) ema + momentum s``.

    ``momentum`` is the weight of the newest batch (PyTorch's convention, as in BatchNorm and
    SpikingJelly's ``VoltageHook``: 0.1 keeps 90 % of the history); the first batch
    initializes. Subclasses implement :meth:`batch_statistic`.
    """

    def __init__(self, momentum: float = 0.1, channel_axis: int | None = None):
        if not (0 < float(momentum) <= 1):
            raise ValueError(f"momentum must satisfy 0 < momentum <= 1, got {momentum!r}")
        self.momentum = float(momentum)
        super().__init__(channel_axis)

    def reset(self):
        self.value = None

    def batch_statistic(self, rows: torch.Tensor) -> torch.Tensor:
        """The statistic of one batch, ``[C, N] -> [C]``."""
        raise NotImplementedError

    def union_statistic(self, rows: torch.Tensor) -> torch.Tensor:
        """The statistic of the union of every rank's current batch (this rank's rows given; one process: its own).

        The default gathers every rank's rows (exact for any statistic; it moves the
        activations); override it with a cheaper reduction where one exists (the maximum:
        all-reduce MAX of the per-rank maxima).
        """
        return self.batch_statistic(distributed.all_gather_rows(rows) if distributed.active() else rows)

    def observe(self, x):
        s = self.union_statistic(self.rows(x))
        self.value = s if self.value is None else (1 - self.momentum) * self.value + self.momentum * s

    def reduce(self):
        """Nothing to merge: every batch statistic was already the union's (see :meth:`union_statistic`)."""

    def compute(self):
        return self._per_site(self.value)

    def key(self):
        return super().key() + (self.momentum,)


class EMAMaxObserver(EMAObserver):
    """EMA of per-batch maxima (SpikingJelly's ``VoltageHook``, mode "Max")."""

    def batch_statistic(self, rows):
        return rows.amax(dim=1)

    def union_statistic(self, rows):
        return distributed.all_max(self.batch_statistic(rows))


class ReservoirObserver(Observer):
    """A uniform random sample of at most ``max_samples`` activation values (per channel when channel-wise).

    Every value gets a uniform random key; the values with the ``max_samples`` smallest keys
    are kept (ties between keys broken by arrival order). With fewer values all of them are
    kept, so statistics computed from the sample are then exact. The sample is pruned only
    when it grows past ``1.25 * max_samples`` (a linear-time selection with ``kthvalue``), so
    each batch costs little more than copying it. ``compute`` returns the sample,
    ``[C, n]`` or ``[n]``.
    """

    PRUNE_AT = 1.25

    def __init__(self, max_samples: int = 1 << 20, channel_axis: int | None = None):
        if int(max_samples) < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples!r}")
        self.max_samples = int(max_samples)
        super().__init__(channel_axis)

    def reset(self):
        self._values: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self._count = 0

    def observe(self, x):
        v = self.rows(x)
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(0)
        self._values.append(v)
        self._keys.append(torch.rand(v.shape, generator=self.generator).to(v.device))
        self._count += v.shape[1]
        if self._count > self.PRUNE_AT * self.max_samples:
            self._prune()

    def _prune(self) -> None:
        values, keys = torch.cat(self._values, 1), torch.cat(self._keys, 1)
        n, k = values.shape[1], self.max_samples
        if n > k:
            kth = torch.kthvalue(keys, k, dim=1, keepdim=True).values
            keep = keys < kth
            need = k - keep.sum(1)  # >= 1: how many keys equal to the k-th to keep per row
            tied = keys == kth
            for row in torch.nonzero(tied.sum(1) > need).flatten().tolist():  # keep the earliest tied keys
                drop = torch.nonzero(tied[row]).flatten()[int(need[row]):]
                tied[row, drop] = False
            keep |= tied
            values = values[keep].view(values.shape[0], k)
            keys = keys[keep].view(keys.shape[0], k)
        self._values, self._keys, self._count = [values], [keys], values.shape[1]

    @property
    def values(self) -> torch.Tensor:
        """The current sample, ``[rows, n]``."""
        if len(self._values) != 1 or self._count > self.max_samples:
            self._prune()
        return self._values[0]

    def compute(self):
        return self._per_site(self.values)

    def reduce(self):
        """Merge the ranks' samples: the values with the ``max_samples`` smallest keys of the union.

        Every value of every rank carries an independent uniform key (``ctx.collect`` seeds each
        rank's generator differently), so the merged sample is a uniform sample of the union,
        as one process draws its own: all values when the union holds at most ``max_samples``
        (then percentiles are exact and equal one process's), else a uniform sample of
        ``max_samples``. The sample's p-th percentile is then the union's true q-th percentile
        for a q within about ``2 sqrt(p (1 - p) / max_samples)`` of p (95 %): +-0.0063
        percentile points at p = 99.9 and the default 2^20 samples. One process and a
        distributed run draw two different samples, so their thresholds differ by what that
        band spans in the activations' tail (0.74 % at most on the CIFAR-10 example CNN with
        512 calibration images); raise ``max_samples`` to narrow it.
        """
        values, keys = self.values, self._keys[0]
        values, keys = distributed.all_gather_rows(values), distributed.all_gather_rows(keys)
        self._values, self._keys, self._count = [values], [keys], values.shape[1]
        if self._count > self.max_samples:
            self._prune()

    def key(self):
        return super().key() + (self.max_samples,)


class PercentileObserver(ReservoirObserver):
    """The ``percentile``-th percentile (0..100, linear interpolation) of a :class:`ReservoirObserver` sample.

    ``nonzero=True`` takes it over positive values only. A site or channel without any value
    gets 0 (the threshold plugins replace it).
    """

    def __init__(self, percentile: float = 99.9, channel_axis: int | None = None, max_samples: int = 1 << 20,
                 nonzero: bool = False):
        if not (0 < float(percentile) <= 100) or not math.isfinite(float(percentile)):
            raise ValueError(f"percentile must satisfy 0 < percentile <= 100, got {percentile!r}")
        self.percentile, self.nonzero = float(percentile), bool(nonzero)
        super().__init__(max_samples, channel_axis)

    def compute(self):
        out = []
        for row in self.values:
            if self.nonzero:
                row = row[row > 0]
            out.append(percentile(row, self.percentile) if row.numel() else torch.tensor(0.0))
        return self._per_site(torch.stack(out))

    def key(self):
        return super().key() + (self.percentile, self.nonzero)


def percentile(values: torch.Tensor, p: float) -> torch.Tensor:
    """The ``p``-th percentile (0..100) of a 1-D tensor, with linear interpolation.

    Same convention as ``numpy.percentile(method="linear")``. Built on ``torch.kthvalue``
    (two order statistics, linear time) rather than ``torch.quantile``, which refuses inputs
    of more than 16 million elements.
    """
    n = values.numel()
    pos = (p / 100.0) * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    v_lo = torch.kthvalue(values, lo + 1).values.double()
    v_hi = v_lo if hi == lo else torch.kthvalue(values, hi + 1).values.double()
    return (v_lo + (v_hi - v_lo) * frac).float()
