"""What the two distributed examples share: the torchrun set-up, the data, the DDP wrapping, rank-0 output.

Everything distributed here is ``torch.distributed`` and ``DistributedDataParallel`` as torch
ships them; snnbridge only adds its helpers (``snnbridge.distributed.shard``, ``sync_buffers``,
``init_from_environment``). Launched without torchrun, the same scripts run in one process.

Batch sizes are *global*: ``--batch-size B`` on N ranks gives every rank ``ceil(B / N)``
images per step, so the hyper-parameters do not change with N and DDP's averaged gradient is
the one-process gradient of the union batch (for a network without BatchNorm in training
mode; with it, each rank normalises by its own batch's statistics).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from examples.cifar10 import data as cdata
from snnbridge import distributed

CLASSES = 10


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: ../shared/data/...)")
    p.add_argument("--smoke", action="store_true", help="random images instead of CIFAR-10, tiny sizes (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: the CPU cores divided by the number of processes)")
    p.add_argument("--no-progress", action="store_true")


def setup(args) -> torch.device:
    """Join torchrun's process group (if launched by it), set the threads per process, seed; return the device."""
    distributed.init_from_environment()
    world = distributed.world_size()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def finish() -> None:
    """Leave the process group (torchrun's; one made by the caller, e.g. a test, is the caller's to destroy)."""
    if distributed.launched_by_torchrun() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def say(*parts) -> None:
    """Print on rank 0 only."""
    if distributed.is_main():
        print(*parts, flush=True)


def write_results(out: str | Path, results: dict, extra: dict[str, dict] | None = None) -> None:
    """On rank 0 only: ``results.json`` (and state dicts in ``extra``, file name -> state) into ``out``."""
    if not distributed.is_main():
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, state in (extra or {}).items():
        torch.save(state, out / name)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    written = " and ".join([str(out / "results.json")] + [str(out / n) for n in extra or {}])
    say(f"wrote {written} ({results['wall_seconds']:.0f} s)")


def per_rank(batch_size: int) -> int:
    """This rank's share of a global batch: ``ceil(B / ranks)``."""
    return -(-int(batch_size) // distributed.world_size())


def smoke_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 32x32 images whose colour depends on the class (learnable), the same on every rank."""
    palette = torch.randint(0, 256, (CLASSES, 3, 1, 1), generator=torch.Generator().manual_seed(12345))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    noise = torch.randint(-60, 61, (n, 3, 32, 32), generator=g)
    return (palette[y] + noise).clamp(0, 255).to(torch.uint8), y


def load_data(args, sizes: dict[str, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random subsets ``{name: (uint8 images, labels)}`` of CIFAR-10 (train/test), the same on every rank.

    ``sizes`` maps "train", "test", "calib" to image counts. Rank 0 finds and extracts the archive
    first (once, into the cache), the others wait for it, then every rank decodes the subsets.
    """
    if args.smoke:
        return {name: smoke_data(n, args.seed + i) for i, (name, n) in enumerate(sizes.items())}
    if distributed.is_main():
        cdata.resolve(args.data)
    if distributed.active():
        torch.distributed.barrier()
    kind, root = cdata.resolve(args.data)
    train_set, test_set = cdata.open_splits(kind, root)
    out = {}
    for i, (name, n) in enumerate(sizes.items()):
        source = test_set if name == "test" else train_set
        out[name] = cdata.to_tensors(cdata.seeded_subset(source, n, args.seed + 1 + i),
                                     not args.no_progress and distributed.is_main(), f"decode {name}")
    return out


def train_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """This rank's shuffled shard (``DistributedSampler``), ``ceil(B / ranks)`` images per batch."""
    return distributed.shard(TensorDataset(x, y), per_rank(batch_size), shuffle=True, seed=seed)


def test_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, transform):
    """This rank's shard of the test images (``transform`` applied up front); accuracy_curve drops its padding."""
    return distributed.shard(TensorDataset(transform(x), y), per_rank(batch_size))


def wrap(module: nn.Module, device: torch.device, **options) -> nn.Module:
    """``DistributedDataParallel(module)`` under a process group (``device_ids`` on a GPU), else ``module`` itself."""
    if not distributed.active():
        return module
    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index], **options)
    return DistributedDataParallel(module, **options)


def mean_over_ranks(value: float, count: int) -> float:
    """The mean of a per-rank average over all ranks' samples (for the printed loss and accuracy)."""
    return float(distributed.all_mean(torch.tensor([float(value)], dtype=torch.float64), count))
