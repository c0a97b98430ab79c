"""Accuracy against the number of time steps, from one simulation per batch.

``snn.sweep(x)`` returns the decoded output after every step 1..T of a single run, so the
accuracy at every T comes from one pass over the data::

    result = snnbridge.accuracy_curve(snn, test_loader, timesteps=[1, 2, 4, 8, 16, 32], ann=ann)
    result["accuracy"]      # one value per requested T (fractions)
    result["curve"]         # every T from 1 to the largest

The command line (``snnbridge evaluate``), the CIFAR-10 example and the benchmarks all use it.

Under an initialised process group (``torchrun``) each rank evaluates the loader it is given,
its shard (:func:`snnbridge.distributed.shard`, or any DataLoader over a
``DistributedSampler(drop_last=False)``); the sampler's padding (repeated samples at the end
of some shards) is left out, and the per-T correct counts, the ANN's correct count and the
sample count are summed over the ranks, so every rank returns the same result, equal to one
process that evaluated the whole set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from . import distributed
from .batches import labelled_batches, total_samples
from .corrections import check_runnable
from .errors import InputError, SnnbridgeError
from .progress import bar as progress_bar


class _Shard:
    """This rank's samples of ``data``: the DistributedSampler's padding left out, counts gathered over the ranks.

    Every refusal is agreed by all ranks (one collective) before they part ways, and a failure
    inside the loop reaches the others through :meth:`gather`, so a problem on one rank is an
    error on every rank, never a hang in a collective the failing rank does not reach.
    """

    def __init__(self, data: Any):
        self.data = data
        self.real: int | None = None
        self.seen = 0
        self.digest: str | None = None
        try:
            self.real = self._real_samples(data)
            problem = None
        except InputError as exc:
            problem = str(exc)
        problems = distributed.all_gather_object(problem)
        bad = [(r, p) for r, p in enumerate(problems) if p]
        if bad:
            raise InputError(bad[0][1] if len(problems) == 1 else "; ".join(f"rank {r}: {p}" for r, p in bad))

    @staticmethod
    def _real_samples(data: Any) -> int | None:
        padding = distributed.sampler_padding(data)  # refuses a sampler with drop_last=True
        sampler = distributed.distributed_sampler(data)
        if sampler is None:
            return None
        if getattr(data, "drop_last", False) or getattr(getattr(data, "batch_sampler", None), "drop_last", False):
            raise InputError("the evaluation DataLoader has drop_last=True, which leaves the last samples of every "
                             "shard out; build it with drop_last=False (snnbridge.distributed.shard does).")
        if distributed.active() and (sampler.num_replicas, sampler.rank) != (distributed.world_size(),
                                                                            distributed.rank()):
            raise InputError(f"the evaluation loader's DistributedSampler is built for rank {sampler.rank} of "
                             f"{sampler.num_replicas}, but this process is rank {distributed.rank()} of "
                             f"{distributed.world_size()}; build it after init_process_group without num_replicas/"
                             "rank (or with snnbridge.distributed.shard).")
        return len(sampler) - int(padding or 0)

    @property
    def total(self) -> int | None:
        """This rank's real samples (for its progress bar)."""
        return self.real if self.real is not None else total_samples(self.data)

    def pairs(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's ``(x, y)`` batches, the padding cut off (it is the tail of the rank's list)."""
        for x, y in labelled_batches(self.data, "evaluation"):
            if self.real is not None:
                keep = self.real - self.seen
                if keep <= 0:
                    break
                if keep < y.shape[0]:
                    x, y = x[:keep], y[:keep]
            if self.digest is None and distributed.active():
                self.digest = distributed.checksum([("x", x), ("y", y)])
            self.seen += int(y.shape[0])
            yield x, y

    def gather(self, failure: BaseException | None, **counts: Any) -> list[dict[str, Any]]:
        """Every rank's ``counts`` (and samples seen), in rank order, after the loop of every rank ended.

        Re-raises this rank's ``failure``; another rank's is an error here too. Refuses ranks
        that all read the same first batch (each sample would count once per rank).
        """
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        parts = distributed.all_gather_object({**counts, "seen": self.seen, "digest": self.digest, "error": error})
        if failure is not None:
            raise failure
        failed = [(r, p["error"]) for r, p in enumerate(parts) if p["error"]]
        if failed:
            raise SnnbridgeError(f"rank {failed[0][0]} failed while evaluating its shard ({failed[0][1]}); its own "
                                 "error message says where and how to fix it.")
        if len(parts) > 1 and parts[0]["digest"] is not None and all(p["digest"] == parts[0]["digest"]
                                                                     for p in parts):
            raise InputError(f"all {len(parts)} ranks evaluated the same first batch, so every sample would be counted "
                             f"{len(parts)} times: give each rank its shard, e.g. "
                             "snnbridge.distributed.shard(dataset, batch_size) (a DistributedSampler).")
        if sum(p["seen"] for p in parts) == 0:
            raise InputError("the evaluation data yielded no samples; pass a non-empty DataLoader.")
        return parts


@torch.no_grad()
def accuracy_curve(snn, data: Iterable, timesteps: Sequence[int] | None = None, *, ann: torch.nn.Module | None = None,
                   device: torch.device | str | None = None, progress: bool = True) -> dict[str, Any]:
    """Top-1 accuracy of ``snn`` after every number of counted steps, from one ``sweep`` per batch.

    :param snn: a :class:`~snnbridge.runtime.SpikingModel` (or anything with ``sweep`` and ``steps_for``).
    :param data: a DataLoader or iterable of ``(images, labels)`` batches.
    :param timesteps: the T values to report (default: powers of two up to ``snn.timesteps``,
        and ``snn.timesteps``); one sweep at the largest serves all of them. A largest T beyond
        the SNN's per-step bias tables (T-specific corrections) is a
        :class:`~snnbridge.errors.TimestepError`, raised before any data is read.
    :param ann: the ANN, for its accuracy on the same images.
    :param device: where to run (default: the SNN's device).
    :param progress: show a progress bar (on rank 0 only, for its shard, under a process group).
    :returns: a JSON-ready dict with ``timesteps``, ``accuracy`` and ``steps_run`` (one entry
        per requested T), ``curve`` (accuracy at every T from 1 to the largest), ``samples``,
        ``ann_accuracy`` (or None), ``seconds`` (the slowest rank's) and ``ranks`` (processes
        that shared the work: 1 without a process group).

    Under a process group every rank must call this with its own shard (see the module
    docstring); ranks that all read the same first batch are refused (their samples would
    count several times), as is a loader that drops samples (``drop_last=True``).
    """
    started = time.perf_counter()
    steps = sorted(set(int(t) for t in (timesteps or default_timesteps(snn.timesteps))))
    if not steps or steps[0] < 1:
        raise InputError(f"timesteps must be positive whole numbers, got {timesteps!r}.")
    t_max = steps[-1]
    if hasattr(snn, "specs"):
        check_runnable(snn, t_max)  # before reading any data: a T its per-step tables cannot cover is refused
    if device is None:
        device = next((p.device for p in snn.parameters()), torch.device("cpu"))
    correct = torch.zeros(t_max, dtype=torch.long)
    ann_correct = 0
    shard = _Shard(data)
    desc = "evaluate" + (f" (rank 0's shard of {distributed.world_size()})" if distributed.active() else "")
    bar = progress_bar(desc=desc, enabled=progress and distributed.is_main(), total=shard.total, unit="img")
    failure = None
    try:
        for x, y in shard.pairs():
            x, y = x.to(device), y.to(device)
            curve = snn.sweep(x, timesteps=t_max)  # [T, B, K]: the output after 1..T steps
            if curve.dim() != 3:
                raise InputError(f"the SNN's output per step is shaped {list(curve.shape[1:])}; accuracy needs class "
                                 "scores [B, classes].")
            correct += (curve.argmax(-1) == y.view(1, -1)).sum(1).cpu()
            if ann is not None:
                ann_correct += int((ann(x).argmax(-1) == y).sum())
            bar.update(int(y.shape[0]))
    except Exception as exc:  # re-raised by gather, after the other ranks learn of it
        failure = exc
    finally:
        bar.close()
    parts = shard.gather(failure, correct=correct.tolist(), ann_correct=ann_correct,
                         seconds=time.perf_counter() - started)
    seen = sum(p["seen"] for p in parts)
    total_correct = torch.tensor([p["correct"] for p in parts], dtype=torch.long).sum(0)
    curve_acc = (total_correct.double() / seen).tolist()
    return {"timesteps": steps, "accuracy": [curve_acc[t - 1] for t in steps],
            "steps_run": [int(snn.steps_for(t)) for t in steps], "curve": curve_acc, "samples": seen,
            "ann_accuracy": sum(p["ann_correct"] for p in parts) / seen if ann is not None else None,
            "seconds": round(max(p["seconds"] for p in parts), 3), "ranks": len(parts)}


@torch.no_grad()
def ann_accuracy(model: torch.nn.Module, data: Iterable, *, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of an ANN on ``(images, labels)`` batches (the yardstick next to an accuracy curve).

    Under a process group, as :func:`accuracy_curve`: each rank passes its shard, the
    ``DistributedSampler``'s padding is left out and the counts are summed over the ranks.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = 0
    shard = _Shard(data)
    failure = None
    try:
        for x, y in shard.pairs():
            correct += int((model(x.to(device)).argmax(-1).cpu() == y.cpu()).sum())
    except Exception as exc:  # re-raised by gather, after the other ranks learn of it
        failure = exc
    parts = shard.gather(failure, correct=correct)
    return sum(p["correct"] for p in parts) / sum(p["seen"] for p in parts)


def default_timesteps(T: int) -> list[int]:
    """Powers of two up to ``T``, and ``T`` itself."""
    out, t = [], 1
    while t <= T:
        out.append(t)
        t *= 2
    return sorted(set(out + [int(T)]))
