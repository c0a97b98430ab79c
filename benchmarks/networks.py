"""The suite's networks: built from the CIFAR-10 example's models, trained with the example's trainer, cached.

Six networks: ``vgg`` (the example's :class:`~examples.cifar10.model.CifarCNN` with two convs per stage,
32-64-128) and ``resnet20`` (:func:`~examples.cifar10.model.make_resnet20`, 16-32-64), each as a ReLU network
and with QCFS activations for L = 4 and 8 (``vgg-qcfs4``, ``resnet20-qcfs8``, ...), prepared with
``snnbridge.prepare(ann, [{"qcfs": {"levels": L, ...}}])`` (Bu et al., ICLR 2022).

Training is ``examples/cifar10/run.py``'s ``train`` (SGD, Nesterov, one-cycle, random crop + flip). A QCFS
network is by default fine-tuned from its trained ReLU network (``qcfs_init="relu"``; every lambda starts
at its site's 99.9th percentile ReLU output on 1,024 training images), which costs a fraction of a
from-scratch run on a CPU; ``qcfs_init="scratch"`` trains it from random weights as the paper does.

A network is cached under ``<dir>/<name>-<hash>.pt`` where the hash covers its whole training config
(architecture, recipe, epochs, optimiser settings, data, seed and, for a fine-tuned network, its parent's
hash), with ``<name>-<hash>.json`` beside it: the training command, epochs, wall seconds, the history and
the test accuracy. The ``.pt`` is rewritten after every epoch (weights plus optimiser, schedule and
augmentation-generator state), so a killed run resumes at the last finished epoch and gives the same
network as an uninterrupted one; once complete it keeps the weights only. Every file loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

import snnbridge
from examples.cifar10 import data as cdata
from examples.cifar10 import run as example
from examples.cifar10.model import CifarCNN, make_resnet20

CHECKPOINT_FORMAT = 1
#: architecture options of the real suite (the VGG: two convs per stage, ~39 M MACs per image; ResNet-20 ~41 M)
ARCHS: dict[str, dict] = {"vgg": {"widths": [[32, 32], [64, 64], [128, 128]]},
                          "resnet20": {"widths": [16, 32, 64], "blocks": 3}}
#: tiny versions for ``--smoke``
SMOKE_ARCHS: dict[str, dict] = {"vgg": {"widths": [4, 8]}, "resnet20": {"widths": [4, 8, 16], "blocks": 1}}
NETWORKS = ("vgg", "vgg-qcfs4", "vgg-qcfs8", "resnet20", "resnet20-qcfs4", "resnet20-qcfs8")
#: percentile of a site's ReLU outputs that initialises its QCFS lambda when fine-tuning from the ReLU network
LAMBDA_PERCENTILE = 99.9


@dataclass(frozen=True)
class Training:
    """How the suite trains its networks; with the network's name this is what the config hash covers."""

    epochs: int = 30  #: ReLU networks (and QCFS ones trained from scratch)
    qcfs_epochs: int = 10  #: QCFS networks fine-tuned from their ReLU network
    qcfs_init: str = "relu"  #: "relu" (fine-tune the trained ReLU network) or "scratch"
    batch_size: int = 256
    lr: float = 0.2  #: peak one-cycle learning rate, from scratch
    qcfs_lr: float = 0.05  #: peak learning rate when fine-tuning
    weight_decay: float = 5e-4
    lambda_init: float = 2.0  #: QCFS lambda from scratch (the paper's 8.0 is meant for 300 epochs)
    seed: int = 0
    archs: dict = field(default_factory=lambda: ARCHS)


@dataclass
class Data:
    """Uint8 images and labels of the splits; the training set is decoded only when a network is trained."""

    ident: str  #: names the data in the config hash ("cifar10" or the smoke data's seed)
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_calib: torch.Tensor
    load_train: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    n_train: int
    _train: tuple[torch.Tensor, torch.Tensor] | None = None

    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images and labels (decoded on first use)."""
        if self._train is None:
            self._train = self.load_train()
        return self._train

    def calibration(self, batch: int = 128, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Normalised calibration batches (on ``device``)."""
        return [cdata.normalize(self.x_calib[i:i + batch]).to(device) for i in range(0, len(self.x_calib), batch)]


def cifar10(test_samples: int | None, calib_samples: int, seed: int = 0, data: str | None = None,
            progress: bool = True) -> Data:
    """The real CIFAR-10 (the example's archive): all 50,000 training images, ``test_samples`` random test images
    (None: all 10,000) and ``calib_samples`` random training images for calibration (seeded, never "the first N")."""
    kind, root = cdata.resolve(data)
    train_set, test_set = cdata.open_splits(kind, root)
    x_test, y_test = cdata.to_tensors(cdata.seeded_subset(test_set, test_samples, seed + 1), progress, "decode test")
    x_cal, _ = cdata.to_tensors(cdata.seeded_subset(train_set, calib_samples, seed + 2), progress, "decode calib")
    return Data("cifar10", x_test, y_test, x_cal, lambda: cdata.to_tensors(train_set, progress, "decode train"),
                len(train_set))


def smoke(seed: int = 0, n_train: int = 256, n_test: int = 128, n_calib: int = 64, classes: int = 10) -> Data:
    """Tiny random data with some structure (one random template per class plus noise), so that one epoch learns
    something; for ``--smoke`` and the tests."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, 3, 32, 32, generator=g) * 255

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = (0.6 * templates[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=g) * 255).round().to(torch.uint8)
        return x, y

    train, (x_test, y_test), (x_cal, _) = draw(n_train), draw(n_test), draw(n_calib)
    return Data(f"smoke-random-{seed}-{n_train}", x_test, y_test, x_cal, lambda: train, n_train)


# -- configs and hashes ------------------------------------------------------------------------------------------
def split_name(name: str) -> tuple[str, int | None]:
    """``"resnet20-qcfs4"`` -> ``("resnet20", 4)``; ``"vgg"`` -> ``("vgg", None)``."""
    arch, _, rest = name.partition("-")
    if arch not in ARCHS or (rest and not (rest.startswith("qcfs") and rest[4:].isdigit() and int(rest[4:]) >= 1)):
        raise SystemExit(f"error: unknown network {name!r}; choose from {', '.join(NETWORKS)} (qcfsL for any L >= 1)")
    return arch, (int(rest[4:]) if rest else None)


def prepare_recipe(name: str, training: Training) -> list | None:
    """The ``snnbridge.prepare`` recipe of a QCFS network (None for a ReLU network)."""
    _, levels = split_name(name)
    if levels is None:
        return None
    lam = LAMBDA_PERCENTILE if training.qcfs_init == "relu" else training.lambda_init
    return [{"qcfs": {"levels": levels, "lambda_init": float(lam)}}]


def config_hash(config: dict) -> str:
    """12 hex digits of the SHA-256 of the config as canonical JSON (key order and spacing do not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def training_config(name: str, training: Training, data: Data) -> dict:
    """Everything that decides the trained weights of network ``name`` (what :func:`config_hash` hashes)."""
    arch, levels = split_name(name)
    if training.qcfs_init not in ("relu", "scratch"):
        raise SystemExit(f"error: qcfs_init must be 'relu' or 'scratch', got {training.qcfs_init!r}")
    tuned = levels is not None and training.qcfs_init == "relu"
    parent = None
    if tuned:
        parent_cfg = training_config(arch, training, data)
        parent = f"{arch}-{config_hash(parent_cfg)}"
    return {"format": CHECKPOINT_FORMAT, "network": name, "arch": arch, "arch_options": training.archs[arch],
            "prepare": prepare_recipe(name, training), "init": parent,
            "lambda_init": f"p{LAMBDA_PERCENTILE} of the ReLU outputs" if tuned else None,
            "epochs": training.qcfs_epochs if tuned else training.epochs, "batch_size": training.batch_size,
            "lr": training.qcfs_lr if tuned else training.lr, "weight_decay": training.weight_decay,
            "seed": training.seed, "data": data.ident, "train_samples": data.n_train}


def build(name: str, training: Training) -> nn.Module:
    """The untrained network ``name`` (prepared with QCFS when its name says so), seeded."""
    arch, _ = split_name(name)
    opts = training.archs[arch]
    torch.manual_seed(training.seed)
    if arch == "vgg":
        model: nn.Module = CifarCNN(widths=[tuple(w) if isinstance(w, list) else w for w in opts["widths"]])
    else:
        model = make_resnet20(widths=tuple(opts["widths"]), blocks=int(opts.get("blocks", 3)))
    recipe = prepare_recipe(name, training)
    return snnbridge.prepare(model, recipe) if recipe else model


def paths(name: str, config: dict, directory: Path) -> tuple[Path, Path]:
    """(checkpoint, metadata JSON) of a network."""
    stem = f"{name}-{config_hash(config)}"
    return directory / f"{stem}.pt", directory / f"{stem}.json"


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(obj, dict) and path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=1))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def training_lock(ckpt: Path):
    """Hold ``<checkpoint>.lock`` (this process's id) while a network trains: a second process training the same
    network would overwrite its checkpoints, so it is refused; a lock left by a dead process is taken over."""
    lock = ckpt.with_suffix(".lock")
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise SystemExit(f"error: {ckpt.name} is being trained by process {pid}; wait for it to finish (or "
                                 "stop it: it resumes later), since two trainings would overwrite each other"
                                 ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def machine() -> dict:
    """Where a run happened (platform, CPU count, GPU)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpu": gpu}


@torch.no_grad()
def test_accuracy(model: nn.Module, data: Data, batch: int = 500) -> float:
    """ANN top-1 accuracy on the data's test images."""
    was = model.training
    model.eval()
    acc = snnbridge.ann_accuracy(model, ((cdata.normalize(data.x_test[i:i + batch]), data.y_test[i:i + batch])
                                         for i in range(0, len(data.x_test), batch)))
    model.train(was)
    return acc


@torch.no_grad()
def init_lambdas(model: nn.Module, data: Data) -> dict[str, float]:
    """Set every QCFS lambda of ``model`` (the ReLU network's weights copied in) to the percentile of its input on the
    calibration images, as a threshold balancing would; returns the values by module name."""
    sites = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "lam", None), nn.Parameter)}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in sites}
    hooks = [m.register_forward_pre_hook(lambda _m, inp, n=n: seen[n].append(inp[0].detach().relu().flatten()))
             for n, m in sites.items()]
    was = model.training
    model.eval()
    try:
        for xb in data.calibration(device=_device(model)):
            model(xb)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for n, m in sites.items():
        values = torch.cat(seen[n])
        values = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))[:2_000_000]]
        lam = max(float(torch.quantile(values, LAMBDA_PERCENTILE / 100)), 1e-3)
        m.lam.fill_(lam)
        out[n] = round(lam, 4)
    return out


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def obtain(name: str, training: Training, data: Data, directory: str | Path, *, command: str = "",
           progress: bool = True, log: Callable[[str], None] = print,
           device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Network ``name`` trained with ``training`` on ``data``: loaded from its cached checkpoint when complete,
    resumed from its last saved epoch when not, else trained on ``device`` (a fine-tuned QCFS network obtains
    its ReLU parent first). Returns the model (eval mode, on ``device``) and its metadata (the JSON written
    beside the checkpoint). The device is recorded in the metadata, not hashed: the same training config on a
    GPU is the same network up to floating-point rounding."""
    directory = Path(directory)
    config = training_config(name, training, data)
    ckpt, meta_path = paths(name, config, directory)
    device = torch.device(device)
    done = _cached(name, training, config, ckpt, meta_path, log)
    if done is not None:
        return done[0].to(device), done[1]
    parent = None
    if config["init"]:  # the ReLU parent first (it takes its own lock)
        parent, _ = obtain(split_name(name)[0], training, data, directory, command=command, progress=progress,
                           log=log, device=device)
    directory.mkdir(parents=True, exist_ok=True)
    with training_lock(ckpt):
        done = _cached(name, training, config, ckpt, meta_path, log)  # finished while we waited for the parent?
        if done is not None:
            return done[0].to(device), done[1]
        return _train(name, training, data, config, ckpt, meta_path, command, progress, log, parent, device)


def _cached(name, training, config, ckpt, meta_path, log) -> tuple[nn.Module, dict] | None:
    """The complete cached network, or None (after checking that a checkpoint there has this config)."""
    if not ckpt.is_file():
        return None
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    if saved.get("config") != config:
        raise SystemExit(f"error: {ckpt} holds a network trained with another config ({saved.get('config')}); "
                         "move it away or delete it")
    if not saved.get("complete"):
        return None
    model = build(name, training)
    model.load_state_dict(saved["state_dict"])
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {
        "network": name, "hash": config_hash(config), "config": config, "complete": True,
        "epochs_done": config["epochs"], "history": saved.get("history", [])}
    log(f"  {name}: cached {ckpt.name} ({meta.get('epochs_done', '?')} epochs, test accuracy "
        f"{100 * meta.get('test_accuracy', float('nan')):.2f} %)")
    return model.eval(), {**meta, "checkpoint": str(ckpt), "loaded": True}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _train(name, training, data, config, ckpt, meta_path, command, progress, log, parent,
           device) -> tuple[nn.Module, dict]:
    """Train (or resume training) network ``name`` on ``device``, saving after every epoch."""
    model = build(name, training)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
    meta = {"network": name, "hash": config_hash(config), "config": config, "commands": [], "machine": machine(),
            "versions": {"torch": torch.__version__, "snnbridge": snnbridge.__version__}}
    if meta_path.is_file():
        meta = {**json.loads(meta_path.read_text()), **{k: meta[k] for k in ("config", "hash")}}
    meta["commands"] = [*meta.get("commands", []), command]
    meta["devices"] = [*meta.get("devices", []), str(device) if device.type == "cpu" else
                       f"{device} ({torch.cuda.get_device_name(device)})"]
    resume = None
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
        resume = saved["train_state"]
        log(f"  {name}: resuming {ckpt.name} after epoch {resume['epoch']}/{config['epochs']}")
    model.to(device)
    if saved is None and parent is not None:
        missing, unexpected = model.load_state_dict(parent.state_dict(), strict=False)
        if unexpected or not all(k.endswith(".lam") for k in missing):
            raise SystemExit(f"error: {name}: the ReLU network's weights do not fit (missing {missing}, unexpected "
                             f"{unexpected})")
        meta["lambda_init_values"] = init_lambdas(model, data)
        meta["parent_test_accuracy"] = test_accuracy(parent, data)
        log(f"  {name}: fine-tuning from {config['init']} (lambda from p{LAMBDA_PERCENTILE}: "
            f"{', '.join(f'{v:.2f}' for v in meta['lambda_init_values'].values())})")
    elif saved is None:
        log(f"  {name}: training {config['epochs']} epoch(s) from scratch")
    x, y = data.train()
    args = SimpleNamespace(epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
                           weight_decay=config["weight_decay"], seed=config["seed"])

    def on_epoch(state: dict) -> None:
        state["history"][-1]["test_acc"] = round(test_accuracy(model, data), 4)
        _save({"config": config, "state_dict": _weights(model), "train_state": _cpu(state), "complete": False}, ckpt)
        meta.update(epochs_done=state["epoch"], history=state["history"], complete=False,
                    train_seconds=round(sum(h["seconds"] for h in state["history"]), 1))
        _save(meta, meta_path)
        log(f"    {name} epoch {state['epoch']}/{config['epochs']}: test accuracy "
            f"{100 * state['history'][-1]['test_acc']:.2f} %")

    history = example.train(model, x, y, args, device, progress, resume=resume, on_epoch=on_epoch)
    model.eval()
    acc = test_accuracy(model, data)
    meta.update(epochs_done=config["epochs"], history=history, complete=True, test_accuracy=acc,
                test_samples=len(data.x_test), train_seconds=round(sum(h["seconds"] for h in history), 1),
                finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    _save({"config": config, "state_dict": _weights(model), "complete": True, "history": history}, ckpt)
    _save(meta, meta_path)
    log(f"  {name}: trained, test accuracy {100 * acc:.2f} % ({meta['train_seconds']:.0f} s of training)")
    return model, {**meta, "checkpoint": str(ckpt), "loaded": False}


def _cpu(obj):
    """``obj`` with every tensor moved to the CPU (optimiser state of a GPU run), so checkpoints load anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def describe(training: Training) -> dict:
    """The training settings as plain data (for the results JSON)."""
    return asdict(training)
