"""torch.distributed, as snnbridge uses it: who this process is, the few reductions, sharded data loaders.

snnbridge starts nothing of its own: launch with ``torchrun`` and call
``torch.distributed.init_process_group`` (gloo on CPU, NCCL on GPUs), or let the command line
do it. When a process group is initialised, every helper here works across its ranks; without
one, each is the identity, so the same code runs in one process unchanged.

The rule a distributed conversion follows: **batch i of the conversion is the union of every
rank's batch i**. Order-free statistics (maxima, means, samples) therefore equal one process
that saw the union of the shards; order-dependent ones (EMAs of per-batch statistics, LTB's
and FTBC's per-batch updates) equal one process whose batch i concatenates the ranks' batches
i. Ranks must hold the same number of calibration batches (a ``DistributedSampler`` makes them
equal); :func:`check_same` refuses otherwise, before any collective could hang.

Plugins reach these through :class:`~snnbridge.context.ConversionContext` (``ctx.all_sum``,
``ctx.all_max``, ``ctx.all_mean``, ``ctx.all_gather_rows``), so they never import
``torch.distributed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from .errors import InputError


def active() -> bool:
    """Whether a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints, draws progress bars and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``WORLD_SIZE`` > 1 with ``RANK``) is set for this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_environment() -> bool:
    """Initialise the default process group from ``torchrun``'s environment, once; True if this process is in one.

    gloo on CPU, NCCL when CUDA is available (then this rank's ``LOCAL_RANK`` GPU is made current).
    """
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def _comm_device() -> torch.device:
    """Where collectives run: this rank's current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not active():
        return t
    work = t.detach().to(_comm_device()).clone()
    dist.all_reduce(work, op=op)
    return work.to(t.device)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``t`` over the ranks (a new tensor; ``t`` itself in one process)."""
    return _reduce(t, dist.ReduceOp.SUM)


def all_max(t: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``t`` over the ranks."""
    return _reduce(t, dist.ReduceOp.MAX)


def all_mean(mean: torch.Tensor, count: int | float) -> torch.Tensor:
    """The mean over the union of the ranks' data, from each rank's ``mean`` over its ``count`` values.

    Computed in float64 as ``sum(mean * count) / sum(count)``; ranks with ``count = 0`` add nothing.
    """
    if not active():
        return mean
    packed = torch.cat([mean.detach().double().flatten() * float(count), torch.tensor([float(count)],
                                                                                     device=mean.device).double()])
    total = all_sum(packed)
    if float(total[-1]) == 0:
        return mean
    return (total[:-1] / total[-1]).to(mean.dtype).view(mean.shape)


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """``[C, N_r]`` rows of every rank joined along dim 1 in rank order, ``[C, sum_r N_r]`` (sizes may differ)."""
    if not active():
        return rows
    world = world_size()
    dev = _comm_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([rows.shape[1]], dtype=torch.long, device=dev))
    n_max = max(int(s) for s in sizes)
    padded = torch.zeros(rows.shape[0], n_max, dtype=rows.dtype, device=dev)
    padded[:, :rows.shape[1]] = rows.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:, :int(s)] for p, s in zip(parts, sizes)], 1).to(rows.device)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``[N_r, ...]`` tensor joined along dim 0 in rank order, ``[sum_r N_r, ...]``."""
    if not active():
        return t
    joined = all_gather_rows(t.reshape(t.shape[0], -1).t().contiguous())
    return joined.t().reshape(joined.shape[1], *t.shape[1:]).contiguous()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_same(value: Any, what: str, fix: str) -> None:
    """Raise :class:`~snnbridge.errors.InputError` on every rank unless all ranks hold an equal ``value``."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        listing = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise InputError(f"the ranks disagree on {what} ({listing}); {fix}")


def checksum(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """A SHA-256 over named tensors and plain values (floats, tuples, None), for comparing ranks bit for bit."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, value in items:
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def model_checksum(snn) -> str:
    """:func:`checksum` of a converted SNN: its state dict, every site's spec and corrections, its decoding window."""
    items: list[tuple[str, Any]] = sorted(snn.state_dict().items())
    for name, site in snn.sites.items():
        for field in dataclasses.fields(site.spec):
            items.append((f"{name}.spec.{field.name}", getattr(site.spec, field.name)))
        for i, c in enumerate(site.corrections):  # their settings and learned tensors
            items.append((f"{name}.correction.{i}", type(c).__qualname__))
            items.extend((f"{name}.correction.{i}.{k}", v) for k, v in sorted(vars(c).items()))
    items.append(("decode_window", repr(snn.decode_window)))
    return checksum(items)


def check_identical(snn) -> str:
    """Every rank's SNN is bit-identical (state, specs, corrections), else :class:`~snnbridge.errors.InputError`.

    Returns the checksum. A mismatch means a plugin reduced something on some ranks only (or
    not at all): report it with the recipe.
    """
    digest = model_checksum(snn)
    check_same(digest[:16], "the converted SNN (checksum of its weights, specs and corrections)",
               "a plugin of the recipe does not reduce its statistics across ranks; report it with the recipe, or "
               "convert in one process.")
    return digest


def shard_counts(total: int, world: int | None = None) -> list[int]:
    """Real (unpadded) samples per rank when ``DistributedSampler(drop_last=False)`` shards ``total`` samples.

    The sampler pads the index list to a multiple of ``world`` by repeating its start, and rank
    r takes every ``world``-th index from r; padding is the tail of each rank's list, so rank r's
    first ``len(range(r, total, world))`` samples are real.
    """
    w = world_size() if world is None else int(world)
    return [len(range(r, total, w)) for r in range(w)]


def sampler_padding(data: Any) -> int | None:
    """How many of this rank's samples, at the end of its shard, are a ``DistributedSampler``'s padding.

    ``None`` when ``data`` is not a DataLoader over a ``DistributedSampler`` (nothing to correct);
    a sampler with ``drop_last=True`` drops instead of padding and is refused by the caller.
    """
    s = distributed_sampler(data)
    if s is None:
        return None
    if s.drop_last:
        raise InputError("the evaluation loader's DistributedSampler has drop_last=True, which leaves samples "
                         "out of the evaluation; build it with drop_last=False (snnbridge corrects for its "
                         "padding).")
    real = shard_counts(len(s.dataset), s.num_replicas)[s.rank]  # type: ignore[arg-type]
    return s.num_samples - real


def distributed_sampler(data: Any) -> torch.utils.data.DistributedSampler | None:
    """The ``DistributedSampler`` behind a DataLoader (its ``sampler``, or its batch sampler's), else None."""
    inner = getattr(getattr(data, "batch_sampler", None), "sampler", None)
    for s in (getattr(data, "sampler", None), inner):
        if isinstance(s, torch.utils.data.DistributedSampler):
            return s
    return None


def shard(dataset: torch.utils.data.Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
          **loader_options: Any) -> torch.utils.data.DataLoader:
    """A DataLoader over this rank's shard of ``dataset``: ``DistributedSampler(drop_last=False)``.

    Every sample lands in exactly one shard; the sampler pads the shards to equal length by
    repeating a few samples (fewer than the number of ranks), and
    :func:`~snnbridge.accuracy_curve` / :func:`~snnbridge.ann_accuracy` leave those out
    (:func:`sampler_padding`). Ranks get equal numbers of batches, which the union-batch rule
    of a distributed conversion needs. Without a process group this is one shard holding the
    whole dataset, in the same order (so the same script runs in one process). Training with
    ``shuffle=True``: call ``loader.sampler.set_epoch(epoch)`` every epoch, as with any
    ``DistributedSampler``. ``loader_options`` go to ``DataLoader`` (``num_workers``,
    ``pin_memory`` ...); ``sampler``, ``batch_sampler`` and ``drop_last=True`` are refused,
    because they would replace or defeat the sharding.
    """
    taken: list[str] = sorted(k for k in ("sampler", "batch_sampler") if k in loader_options)
    if loader_options.get("drop_last"):
        taken.append("drop_last=True")
    if taken:
        raise InputError(f"snnbridge.distributed.shard builds its own DistributedSampler; drop {', '.join(taken)} "
                         "(no sample is ever dropped).")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be a positive whole number, got {batch_size!r}.")
    sampler: torch.utils.data.DistributedSampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=int(seed), drop_last=False)
    return torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, drop_last=False,
                                       **loader_options)


def sync_buffers(module: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Copy rank ``src``'s buffers (BatchNorm running statistics ...) into ``module`` on every rank; returns it.

    ``DistributedDataParallel`` keeps parameters equal, but each rank's BatchNorm updates its
    running statistics on its own batches after DDP's last buffer broadcast, so ranks end a
    training run with different statistics, and BN folding would give each rank another SNN.
    Call this after training and before converting (in one process it does nothing).
    """
    if active():
        for buf in module.buffers():
            work = buf.detach().to(_comm_device()).clone()
            dist.broadcast(work, src=src)
            buf.data.copy_(work.to(buf.device))
    return module
