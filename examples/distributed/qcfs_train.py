"""QCFS training of a prepared ANN under DistributedDataParallel, then conversion and a distributed evaluation.

    torchrun --nproc_per_node=2 examples/distributed/qcfs_train.py --epochs 2 --train-samples 10000
    torchrun --nproc_per_node=2 examples/distributed/qcfs_train.py --smoke      # random data, seconds
    python examples/distributed/qcfs_train.py --smoke                           # the same script, one process

1. ``snnbridge.prepare(make_model(), [{"qcfs": ...}])`` swaps the example CNN's ReLUs for QCFS
   activations with trainable thresholds lambda (Bu et al., ICLR 2022;
   github.com/putshua/ANN_SNN_QCFS);
2. the prepared ANN trains under ``DistributedDataParallel`` on each rank's shard of a seeded
   CIFAR-10 subset (``snnbridge.distributed.shard``: a ``DistributedSampler``), SGD with
   momentum and a one-cycle schedule; every rank ends with the same weights and lambdas (DDP),
   and ``snnbridge.distributed.sync_buffers`` gives every rank rank 0's BatchNorm statistics;
3. ``snnbridge.convert(ann, ["qcfs"])`` (theta = lambda, v0 = theta / 2: no data needed) on
   every rank: the same SNN everywhere (convert checks it);
4. ``snnbridge.accuracy_curve`` on each rank's shard of the test subset, counts summed over the
   ranks: accuracy at every T from one sweep per batch, as one process would report it.

Rank 0 prints and writes ``results.json`` and ``qcfs_ann.pt`` (the prepared ANN's state_dict:
``snnbridge.prepare(make_model(), recipe).load_state_dict(...)`` restores it) into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F

import snnbridge
from examples.cifar10 import data as cdata
from examples.cifar10.model import make_model
from examples.distributed import common
from snnbridge import distributed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_common_options(p)
    p.add_argument("--levels", type=int, default=8, help="QCFS quantization levels L")
    p.add_argument("--lambda-init", type=float, default=2.0, help="initial lambda (the paper's 8.0 is meant for "
                                                                  "300 epochs; see benchmarks/qcfs_family.py)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=10000, help="random (seeded) training images")
    p.add_argument("--test-samples", type=int, default=2000, help="random (seeded) test images")
    p.add_argument("--batch-size", type=int, default=256, help="global batch (all ranks together)")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--timesteps", default="1,2,4,8,16,32", help="T values to report; one sweep at the largest")
    p.add_argument("--backend", default="torch", help="neuron backend of the SNN")
    p.add_argument("--out", default="runs/distributed/qcfs")
    return p


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One SGD step on this rank's batch; DDP averages the gradients over the ranks in ``backward``."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train(ann, data, args, device) -> list[dict]:
    """SGD (Nesterov, one-cycle) on each rank's shard with crop + flip augmentation; returns per-epoch stats."""
    model = common.wrap(ann, device)
    loader = common.train_loader(*data["train"], args.batch_size, args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, args.epochs * len(loader)),
                                                pct_start=0.25)
    g = torch.Generator().manual_seed(args.seed + 1000 * distributed.rank())  # each rank its own augmentation
    history = []
    model.train()
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for xb, yb in loader:
            xb, yb = cdata.normalize(cdata.augment(xb, g)).to(device), yb.to(device)
            loss_sum += float(train_step(model, opt, xb, yb)) * len(yb)
            seen += len(yb)
            sched.step()
        loss = common.mean_over_ranks(loss_sum / max(1, seen), seen)
        history.append({"epoch": epoch + 1, "loss": round(loss, 4), "seconds": round(time.perf_counter() - started, 2)})
        common.say(f"  epoch {epoch + 1}/{args.epochs}: loss {loss:.3f} (all ranks), {history[-1]['seconds']:.1f} s")
    ann.eval()
    distributed.sync_buffers(ann)  # BatchNorm statistics: each rank updated its own after DDP's last broadcast
    return history


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.train_samples, args.test_samples, args.batch_size, args.epochs, args.lr = 64, 30, 8, 1, 0.02
        args.timesteps = "1,2,4"
    device = common.setup(args)
    try:
        started = time.perf_counter()
        timesteps = sorted({int(t) for t in args.timesteps.split(",")})
        data = common.load_data(args, {"train": args.train_samples, "test": args.test_samples})
        recipe = [{"qcfs": {"levels": args.levels, "lambda_init": args.lambda_init}}]
        ann = snnbridge.prepare(make_model(num_classes=common.CLASSES), recipe).to(device)
        common.say(f"QCFS training on {distributed.world_size()} process(es), {torch.get_num_threads()} thread(s) "
                   f"each, {len(data['train'][0])} images, global batch {args.batch_size}")
        train_started = time.perf_counter()
        history = train(ann, data, args, device)
        train_seconds = time.perf_counter() - train_started

        snn = snnbridge.convert(ann, ["qcfs"], example_input=cdata.normalize(data["test"][0][:2]).to(device),
                                timesteps=max(timesteps), backend=args.backend, progress=False)
        test = common.test_loader(*data["test"], 250, cdata.normalize)
        curve = snnbridge.accuracy_curve(snn, test, timesteps, ann=ann, device=device,
                                         progress=not args.no_progress)
        results = {"config": vars(args), "ranks": distributed.world_size(), "threads": torch.get_num_threads(),
                   "history": history, "train_seconds": round(train_seconds, 1),
                   "lambdas": [float(m.lam.detach()) for m in ann.modules() if hasattr(m, "lam")],
                   "ann_accuracy": curve["ann_accuracy"], "timesteps": curve["timesteps"],
                   "accuracy": curve["accuracy"], "samples": curve["samples"],
                   "checksums": {"ann": distributed.checksum(ann.state_dict()), "snn": distributed.model_checksum(snn)},
                   "wall_seconds": round(time.perf_counter() - started, 1)}
        common.say(f"ANN (QCFS) accuracy {100 * curve['ann_accuracy']:.2f} % on {curve['samples']} test images")
        for t, a in zip(curve["timesteps"], curve["accuracy"]):
            common.say(f"  SNN T={t:<3} {100 * a:6.2f} %")
        common.write_results(args.out, results, extra={"qcfs_ann.pt": ann.state_dict()})
        return results
    finally:
        common.finish()


if __name__ == "__main__":
    main()
