"""Fine-tune a converted SNN under DistributedDataParallel with TET and a surrogate gradient, on every rank's shard.

    torchrun --nproc_per_node=2 examples/distributed/finetune.py --epochs 1 --train-samples 10000
    torchrun --nproc_per_node=2 examples/distributed/finetune.py --smoke        # random data, seconds
    python examples/distributed/finetune.py --smoke                             # the same script, one process

1. the trained CNN of ``examples/cifar10`` (``--ann-checkpoint``, default ``runs/cifar10/ann.pt``,
   written by that example; ``--smoke`` uses the untrained network), taking images in [0, 1]
   (``examples/finetune``'s ``PixelModel``);
2. converted with ``--recipe`` (default robustnorm + opi) on genuine ``--backend`` neurons
   (default SpikingJelly), calibrating on each rank's shard of the calibration images in
   batches of ``ceil(128 / ranks)``: the ranks' batch i together is one process's batch i, the
   statistics are reduced over the ranks, and every rank gets the same SNN (convert checks it);
3. ``snn.set_surrogate(snnbridge.surrogate(--surrogate, framework=--backend))`` and
   ``snnbridge.training_loss(--loss)`` (TET, Deng et al., ICLR 2022), then Adam on every weight
   of the SNN under ``DistributedDataParallel``: DDP wraps a two-line module whose ``forward``
   is ``snn.steps(x)`` (per-step outputs ``[T, B, K]``, what TET takes), so the gradients of
   every rank are averaged in ``backward``; the framework's own reset before every batch;
4. test accuracy at T before and after (``snnbridge.accuracy_curve`` on each rank's shard,
   counts summed over the ranks).

Rank 0 prints and writes ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch import nn
from torch.utils.data import TensorDataset

import snnbridge
from examples.cifar10 import run as cifar
from examples.distributed import common
from examples.finetune.run import PixelModel, pixels
from snnbridge import distributed


class PerStep(nn.Module):
    """``snn.steps(x)`` as a module's ``forward``: what ``DistributedDataParallel`` wraps to train on per-step outputs.

    DDP averages gradients only for what runs through its own ``forward``; calling
    ``ddp.module.steps(x)`` directly would skip its reduction.
    """

    def __init__(self, snn: snnbridge.SpikingModel):
        super().__init__()
        self.snn = snn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snn.steps(x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_common_options(p)
    p.add_argument("--ann-checkpoint", default="runs/cifar10/ann.pt", help="the trained ANN of examples/cifar10")
    p.add_argument("--recipe", default='["robustnorm", "opi"]', help="conversion recipe (JSON)")
    p.add_argument("--backend", default="spikingjelly", help="neuron backend: spikingjelly, snntorch or torch")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--loss", default='["tet"]', help="training-loss recipe (JSON)")
    p.add_argument("--surrogate", default='"localzo"', help="surrogate recipe (JSON), e.g. "
                                                            "'{\"sg\": {\"shape\": \"atan\"}}'")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks together)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--out", default="runs/distributed/finetune")
    return p


def reset_function(backend: str):
    """The framework's own reset call (SpikingJelly ``functional.reset_net``, snnTorch ``utils.reset``)."""
    if backend == "spikingjelly":
        from spikingjelly.activation_based import functional

        return functional.reset_net
    if backend == "snntorch":
        import snntorch.utils

        return snntorch.utils.reset
    return lambda net: None  # a SpikingModel starts every run from its initial state anyway


def finetune_step(model, snn, opt, loss_fn, x: torch.Tensor, y: torch.Tensor, reset) -> torch.Tensor:
    """One step on this rank's batch: reset, per-step outputs through DDP, the loss, averaged gradients, Adam."""
    reset(snn)
    out = model(x)  # [T, B, K]
    loss = loss_fn(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def load_ann(args) -> nn.Module:
    """The examples/cifar10 CNN with its trained weights (untrained with --smoke), in pixel space."""
    model = cifar.load_factory(cifar.DEFAULT_MODEL)(num_classes=common.CLASSES)
    if not args.smoke:
        ckpt = Path(args.ann_checkpoint)
        if not ckpt.is_file():
            raise SystemExit(f"no ANN checkpoint at {ckpt}: train it first with `python examples/cifar10/run.py` "
                             "(its main command writes runs/cifar10/ann.pt), or pass --ann-checkpoint.")
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"] if "state_dict" in saved else saved)
    return PixelModel(model).eval()


def convert(ann, data, args, device):
    """Convert on every rank, calibrating on its shard (batch i of all ranks = one process's batch i of 128)."""
    calib = distributed.shard(TensorDataset(data["calib"][0]), common.per_rank(128))
    batches = [pixels(x).to(device) for (x,) in calib]
    return snnbridge.convert(ann, json.loads(args.recipe), calibration=batches, backend=args.backend,
                             timesteps=args.timesteps, progress=False, seed=args.seed)


def accuracy(snn, data, args, device) -> float:
    test = common.test_loader(*data["test"], 250, pixels)
    return snnbridge.accuracy_curve(snn, test, [args.timesteps], device=device, progress=False)["accuracy"][0]


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.train_samples, args.test_samples, args.calib_samples, args.batch_size = 32, 30, 32, 8
        args.epochs, args.lr = 1, 1e-3
    device = common.setup(args)
    try:
        started = time.perf_counter()
        data = common.load_data(args, {"train": args.train_samples, "test": args.test_samples,
                                       "calib": args.calib_samples})
        ann = load_ann(args).to(device)
        snn = convert(ann, data, args, device)
        surrogate = json.loads(args.surrogate)
        snn.set_surrogate(snnbridge.surrogate(surrogate, framework=args.backend))
        loss_fn = snnbridge.training_loss(json.loads(args.loss))
        before = accuracy(snn, data, args, device)
        common.say(f"[{args.backend}] T={args.timesteps}, {distributed.world_size()} process(es): "
                   f"{100 * before:.2f} % before fine-tuning (loss {loss_fn!r}, surrogate {surrogate})")

        snn.requires_grad_(True)  # conversion hands back frozen weights; DDP needs them trainable when it wraps
        model = common.wrap(PerStep(snn), device, forward_sync_buffers=False)  # buffers never change in training
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        reset = reset_function(args.backend)
        loader = common.train_loader(*data["train"], args.batch_size, args.seed)
        history = []
        for epoch in range(args.epochs):
            loader.sampler.set_epoch(epoch)
            snn.train()
            t0, loss_sum, seen = time.perf_counter(), 0.0, 0
            for xb, yb in loader:
                xb, yb = pixels(xb).to(device), yb.to(device)
                loss_sum += float(finetune_step(model, snn, opt, loss_fn, xb, yb, reset)) * len(yb)
                seen += len(yb)
            loss = common.mean_over_ranks(loss_sum / max(1, seen), seen)
            history.append({"epoch": epoch + 1, "loss": round(loss, 4), "seconds": round(time.perf_counter() - t0, 2)})
            common.say(f"  epoch {epoch + 1}/{args.epochs}: loss {loss:.3f} (all ranks), {history[-1]['seconds']} s")
        snn.requires_grad_(False)
        snn.eval()
        after = accuracy(snn, data, args, device)
        common.say(f"[{args.backend}] after {args.epochs} epoch(s): {100 * after:.2f} %")
        results = {"config": vars(args), "ranks": distributed.world_size(), "threads": torch.get_num_threads(),
                   "before": before, "after": after, "history": history,
                   "checksums": {"snn": distributed.model_checksum(snn)},
                   "wall_seconds": round(time.perf_counter() - started, 1)}
        common.write_results(args.out, results)
        return results
    finally:
        common.finish()


if __name__ == "__main__":
    main()
