"""Fine-tune a converted CIFAR-10 SNN at T = 4 with TET + LocalZO, in plain SpikingJelly and snnTorch loops.

    python examples/finetune/run.py                 # both loops, a few minutes on 2 CPU cores
    python examples/finetune/run.py --epochs 3 --train-samples 20000 --test-samples 2000

What it does:

1. the trained CNN of ``examples/cifar10`` (its checkpoint ``runs/cifar10/ann.pt``, written by the
   README's main command; trained here with the same settings when it is missing), wrapped so that
   it takes images in ``[0, 1]`` pixel space (normalisation inside the model, as attacks expect);
2. converted at T = 4 (``--recipe``, default ``robustnorm`` + ``opi``) once per framework, with
   genuine SpikingJelly ``IFNode`` / snnTorch ``Leaky`` neurons;
3. fine-tuned in that framework's own idiom - ``functional.reset_net`` before every batch for
   SpikingJelly, ``snntorch.utils.reset`` and ``snntorch.functional.acc.accuracy_rate`` for snnTorch -
   on the per-step outputs ``snn.steps(x)`` (``[T, B, K]``) with ``snnbridge.training_loss(["tet"])``
   and the LocalZO surrogate ``snnbridge.surrogate(["localzo"], framework=...)``;
4. test accuracy before and after, wall time per epoch, ``results.json`` and ``finetune.png`` in ``--out``.
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
from tqdm.auto import tqdm

import snnbridge
from examples.cifar10 import data as cdata
from examples.cifar10 import run as cifar

FRAMEWORKS = ("spikingjelly", "snntorch")


class PixelModel(nn.Module):
    """``model(normalize(x))`` for images ``x`` in ``[0, 1]``: attacks and ``gsr``'s ``h`` work in pixel units."""

    def __init__(self, model: nn.Module, mean=cdata.MEAN, std=cdata.STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def pixels(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float ``[0, 1]``."""
    return x_u8.float() / 255


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: ../shared/data/...)")
    p.add_argument("--ann-checkpoint", default="runs/cifar10/ann.pt",
                   help="the trained ANN of examples/cifar10 (trained here with its defaults when missing)")
    p.add_argument("--recipe", default='["robustnorm", "opi"]', help="conversion recipe (JSON)")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--loss", default='["tet"]', help="training-loss recipe (JSON), e.g. [] for CE on the mean")
    p.add_argument("--surrogate", default='"localzo"',
                   help="surrogate recipe (JSON), e.g. '{\"sg\": {\"shape\": \"atan\"}}'; null keeps the framework's")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/finetune")
    p.add_argument("--no-progress", action="store_true")
    return p


def _json_arg(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise cifar.RunError(f"--{what} takes JSON, e.g. '[\"tet\"]'; got {text!r} ({exc})") from None


# -- data and ANN -------------------------------------------------------------------------------------------
def load_data(args) -> dict:
    """Random, seeded train / test / calibration subsets as uint8 tensors (the archive is class-ordered)."""
    try:
        kind, root = cdata.resolve(args.data)
        train_set, test_set = cdata.open_splits(kind, root)
    except (cdata.DataNotFoundError, cdata.DataLayoutError, cdata.UnsafeArchiveError) as exc:
        raise cifar.RunError(str(exc)) from None
    progress = not args.no_progress
    out = {"classes": list(train_set.classes)}
    for name, ds, n, seed in (("train", train_set, args.train_samples, args.seed + 3),
                              ("test", test_set, args.test_samples, args.seed + 1),
                              ("calib", train_set, args.calib_samples, args.seed + 2)):
        out[name] = cdata.to_tensors(cdata.seeded_subset(ds, n, seed), progress, f"decode {name}")
    return out


def load_ann(args, data: dict) -> PixelModel:
    """The example CNN with the checkpoint's weights (trained with examples/cifar10's defaults when missing)."""
    ckpt = Path(args.ann_checkpoint)
    model = cifar.load_factory(cifar.DEFAULT_MODEL)(num_classes=len(data["classes"]))
    if not ckpt.is_file():
        print(f"no ANN checkpoint at {ckpt}: training one with examples/cifar10's defaults", flush=True)
        targs = cifar.build_parser().parse_args(["--seed", str(args.seed)])
        kind, root = cdata.resolve(args.data)
        train_set, _ = cdata.open_splits(kind, root)
        x, y = cdata.to_tensors(cdata.seeded_subset(train_set, targs.train_samples, targs.seed), not args.no_progress,
                                "decode ANN train")
        torch.manual_seed(targs.seed)
        cifar.train(model, x, y, targs, torch.device("cpu"), not args.no_progress)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "meta": cifar._training_meta(targs, len(x))}, ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"] if "state_dict" in saved else saved)
    return PixelModel(model).eval()


# -- the two framework loops --------------------------------------------------------------------------------
def batches(x_u8, y, size: int, generator: torch.Generator | None = None, augment: bool = False):
    order = torch.randperm(len(x_u8), generator=generator) if generator is not None else torch.arange(len(x_u8))
    for i in range(0, len(x_u8), size):
        idx = order[i:i + size]
        xb = cdata.augment(x_u8[idx], generator) if augment else x_u8[idx]
        yield pixels(xb), y[idx]


@torch.no_grad()
def accuracy(snn, x_u8, y, batch: int = 250) -> float:
    snn.eval()
    correct = sum(int((snn(xb).argmax(1) == yb).sum()) for xb, yb in batches(x_u8, y, batch))
    return correct / len(x_u8)


def _reset_and_accuracy(framework: str):
    """The framework's own reset call and accuracy helper for per-step outputs."""
    if framework == "spikingjelly":
        from spikingjelly.activation_based import functional

        return functional.reset_net, lambda out, y: float((out.mean(0).argmax(1) == y).float().mean())
    if framework == "snntorch":
        import snntorch.utils
        from snntorch.functional import acc

        return snntorch.utils.reset, acc.accuracy_rate  # sums the per-step outputs over time, then argmax
    return (lambda net: None), lambda out, y: float((out.mean(0).argmax(1) == y).float().mean())


def finetune(snn, data: dict, loss_fn, args, framework: str) -> list[dict]:
    """Adam on every weight of the SNN, per-step outputs, the framework's reset before each batch."""
    reset, batch_accuracy = _reset_and_accuracy(framework)
    snn.requires_grad_(True)  # conversion hands back frozen weights; fine-tuning trains all of them
    opt = torch.optim.Adam(snn.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    x_u8, y = data["train"]
    needs_inputs = "gsr" in loss_fn.recipe.names  # it differentiates the outputs w.r.t. the input
    history = []
    for epoch in range(args.epochs):
        snn.train()
        started, loss_sum, acc_sum, n = time.perf_counter(), 0.0, 0.0, 0
        bar = tqdm(batches(x_u8, y, args.batch_size, g, augment=True), total=-(-len(x_u8) // args.batch_size),
                   desc=f"{framework} epoch {epoch + 1}/{args.epochs}", unit="batch", disable=args.no_progress,
                   leave=False)
        for xb, yb in bar:
            reset(snn)
            if needs_inputs:
                xb.requires_grad_(True)
            out = snn.steps(xb)  # [T, B, K], with gradients through the surrogate
            loss = loss_fn(out, yb, model=snn, inputs=xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            acc_sum += float(batch_accuracy(out.detach(), yb)) * len(yb)
            n += len(yb)
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{acc_sum / n:.3f}")
        bar.close()
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / n, 4), "train_acc": round(acc_sum / n, 4),
                        "seconds": round(time.perf_counter() - started, 2)})
        print(f"  {framework} epoch {epoch + 1}: loss {loss_sum / n:.3f}, train acc {acc_sum / n:.3f}, "
              f"{history[-1]['seconds']:.1f} s", flush=True)
    snn.requires_grad_(False)
    snn.eval()
    return history


def convert(ann, data: dict, args, framework: str):
    calib = [pixels(data["calib"][0][i:i + 128]) for i in range(0, len(data["calib"][0]), 128)]
    return snnbridge.convert(ann, _json_arg(args.recipe, "recipe"), calibration=calib, backend=framework,
                             timesteps=args.timesteps, progress=not args.no_progress, seed=args.seed)


def run_framework(ann, data: dict, args, framework: str):
    """Convert, set the surrogate, fine-tune: ``(snn, record)`` with accuracy before and after."""
    snn = convert(ann, data, args, framework)
    surrogate = _json_arg(args.surrogate, "surrogate")
    if surrogate is not None:
        snn.set_surrogate(snnbridge.surrogate(surrogate, framework=framework))
    loss_fn = snnbridge.training_loss(_json_arg(args.loss, "loss"))
    x_test, y_test = data["test"]
    before = accuracy(snn, x_test, y_test)
    print(f"[{framework}] T={args.timesteps} before fine-tuning: {100 * before:.2f}%  (loss {loss_fn!r}, surrogate "
          f"{surrogate})", flush=True)
    history = finetune(snn, data, loss_fn, args, framework)
    after = accuracy(snn, x_test, y_test)
    print(f"[{framework}] after {args.epochs} epoch(s): {100 * after:.2f}%", flush=True)
    return snn, {"framework": framework, "before": before, "after": after, "history": history,
                 "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, len(history))}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = range(len(runs))
    ax.bar([x - 0.2 for x in xs], [100 * r["before"] for r in runs], 0.4, label="converted")
    ax.bar([x + 0.2 for x in xs], [100 * r["after"] for r in runs], 0.4, label="fine-tuned")
    ax.axhline(100 * results["ann_accuracy"], color="k", ls="--", lw=1, label="ANN")
    ax.set_xticks(list(xs), [r["framework"] for r in runs])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"T={results['config']['timesteps']}, loss {results['config']['loss']}, "
                 f"surrogate {results['config']['surrogate']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = sorted(set(frameworks) - {"spikingjelly", "snntorch", "torch"})
    if unknown:
        raise cifar.RunError(f"--frameworks takes spikingjelly, snntorch, torch; got {', '.join(unknown)}")
    started = time.perf_counter()
    data = load_data(args)
    ann = load_ann(args, data)
    ann_acc = snnbridge.ann_accuracy(ann, batches(*data["test"], 250))
    print(f"ANN test accuracy {100 * ann_acc:.2f}% ({len(data['test'][0])} images)", flush=True)
    runs = [run_framework(ann, data, args, f)[1] for f in frameworks]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"config": {k: v for k, v in vars(args).items()}, "ann_accuracy": ann_acc, "runs": runs,
               "wall_seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "finetune.png")
    print(f"\n{'framework':<14}{'before':>9}{'after':>9}{'s/epoch':>9}")
    for r in runs:
        print(f"{r['framework']:<14}{100 * r['before']:>8.2f}%{100 * r['after']:>8.2f}%{r['seconds_per_epoch']:>9.1f}")
    print(f"wrote {out / 'results.json'} and {out / 'finetune.png'} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
