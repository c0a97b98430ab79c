"""snnbridge's main job: train a small CNN on real CIFAR-10, convert it, measure accuracy vs T.

    python examples/cifar10/run.py                       # the default run, a few minutes on 2 CPU cores
    python examples/cifar10/run.py --epochs 30 --train-samples 50000 --test-samples 10000   # a benchmark

Steps (each timed): find / extract / decode the data -> train the CNN (or load the checkpoint
so that reruns skip training) -> ANN test accuracy -> for every recipe x backend: convert with
the baselines, run ONE sweep per test batch at the largest T (``snn.sweep`` gives the output
after each of 1..T steps from one run) -> table, ``results.json`` and ``accuracy_vs_T.png``
in ``--out``. See examples/cifar10/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples.cifar10`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import snnbridge
from examples.cifar10 import data as cdata

#: recipe labels usable in --recipes (more with --recipe LABEL=JSON)
RECIPES: dict[str, list] = {
    "maxnorm": ["maxnorm"],
    "robustnorm": [{"robustnorm": {"percentile": 99.9}}],
    "maxnorm-cw": [{"maxnorm": {"channelwise": True}}],
    "robustnorm-cw": [{"robustnorm": {"percentile": 99.9, "channelwise": True}}],
    # for a network trained with QCFS activations (--qcfs L)
    "qcfs": ["qcfs"],
    # cos's rho and srp's tau default to auto: the network's L (at most 8)
    "qcfs+cos": ["qcfs", "cos"],
    "qcfs+srp": ["qcfs", "srp"],
    "qcfs+cos+srp": ["qcfs", "cos", "srp"],
}
DEFAULT_RECIPES = {"relu": "maxnorm,robustnorm", "qcfs": "qcfs,qcfs+cos,qcfs+srp"}
DEFAULT_TIMESTEPS = {"relu": "4,8,16,32,64", "qcfs": "1,2,4,8"}
#: the best training-free stack at low T on this network (one conversion per T: its corrections are T-specific);
#: chosen on the measurements in examples/cifar10/README.md
BEST: list = ["ltb", "ftbc"]
DEFAULT_BACKENDS = ("torch", "spikingjelly", "snntorch")
DEFAULT_MODEL = "examples.cifar10.model:make_model"
CHECKPOINT_FORMAT = 1


class RunError(SystemExit):
    """A bad option or missing requirement: exits (status 1) with a message that names the fix."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# -- options ---------------------------------------------------------------------------------------------
def _int_list(text: str, what: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise RunError(f"--{what} takes comma-separated whole numbers, e.g. 4,8,16,32,64; got {text!r}") from None
    if not values or values[0] < 1:
        raise RunError(f"--{what} needs positive whole numbers, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    out: list[str] = []
    for v in text.split(","):
        v = v.strip()
        if v and v not in out:
            out.append(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="examples/cifar10/run.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a small CNN on CIFAR-10, convert it to SNNs with snnbridge's baselines on each backend, "
                    "and report accuracy vs the number of time steps T.")
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help=f"cifar10-jpeg.tar.gz, an extracted folder (train/ and test/ class folders) or a torchvision "
                        f"CIFAR-10 folder; default: ${cdata.ENV_VAR}, else {cdata.DEFAULT_ARCHIVE}")
    d.add_argument("--cache-dir", default=None, help="where the archive is extracted (once); default: "
                                                     "$XDG_CACHE_HOME/snnbridge/cifar10 or ~/.cache/snnbridge/cifar10")
    d.add_argument("--train-samples", type=int, default=50000, help="random training images used for training")
    d.add_argument("--test-samples", type=int, default=1000, help="random test images for the ANN and the SNNs")
    d.add_argument("--calib-samples", type=int, default=512, help="random training images for calibration")
    t = p.add_argument_group("training")
    t.add_argument("--model", default=DEFAULT_MODEL, help="module:factory building the (untrained) ANN")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--qcfs", type=int, default=None, metavar="L",
                   help="the QCFS path: train with QCFS activations of L levels (snnbridge.prepare(model, "
                        "[{'qcfs': {'levels': L}}])) and convert with the QCFS family at T = 1-8; QCFS needs more "
                        "epochs than a ReLU net to approach it (e.g. --epochs 10)")
    t.add_argument("--qcfs-lambda", type=float, default=2.0,
                   help="initial QCFS clip lambda (the paper's 8.0 is meant for 300-epoch training)")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, one-cycle schedule)")
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--checkpoint", default=None,
                   help="trained weights: loaded if the file exists (skips training), else written after training; "
                        "default: OUT/ann.pt (reused only when the training options match)")
    t.add_argument("--retrain", action="store_true", help="train even if the checkpoint exists (and overwrite it)")
    c = p.add_argument_group("conversion")
    c.add_argument("--recipes", default=None,
                   help=f"comma-separated recipe labels: {', '.join(RECIPES)} (add your own with --recipe); default: "
                        f"{DEFAULT_RECIPES['relu']} ({DEFAULT_RECIPES['qcfs']} with --qcfs)")
    c.add_argument("--recipe", action="append", default=[], metavar="LABEL=JSON",
                   help='an extra recipe, e.g. \'robust9999=[{"robustnorm": {"percentile": 99.99}}]\' (repeatable)')
    c.add_argument("--backends", default=None,
                   help=f"comma-separated neuron backends; default: {','.join(DEFAULT_BACKENDS)} (those installed, "
                        "with a warning for any missing)")
    c.add_argument("--timesteps", default=None, help="T values to report; one sweep at the largest; default "
                   f"{DEFAULT_TIMESTEPS['relu']} ({DEFAULT_TIMESTEPS['qcfs']} with --qcfs)")
    c.add_argument("--best", default=json.dumps(BEST), metavar="JSON",
                   help="the low-T stack converted once per --best-timesteps value (on the first backend, then "
                        "moved to the others with snn.to_backend); '[]' to skip; not used with --qcfs")
    c.add_argument("--best-timesteps", default="4,8,16", help="T values the --best stack is converted for")
    c.add_argument("--eval-batch-size", type=int, default=500, help="test images per SNN sweep")
    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, help="folder for results.json, accuracy_vs_T.png and ann.pt; default "
                   "runs/cifar10 (runs/cifar10-qcfs-L<L> with --qcfs)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    r.add_argument("--threads", type=int, default=2, help="torch CPU threads (torch.set_num_threads)")
    r.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def resolve_recipes(args) -> dict[str, list]:
    chosen: dict[str, list] = {}
    mode = "qcfs" if args.qcfs is not None else "relu"
    for label in _name_list(args.recipes if args.recipes is not None else DEFAULT_RECIPES[mode]):
        if label not in RECIPES:
            raise RunError(f"unknown recipe label {label!r} in --recipes; choose from {', '.join(RECIPES)} or define "
                           "one with --recipe LABEL=JSON")
        chosen[label] = RECIPES[label]
    for item in args.recipe:
        label, sep, text = item.partition("=")
        if not sep or not label.strip():
            raise RunError(f"--recipe takes LABEL=JSON, e.g. 'r9999=[{{\"robustnorm\": {{\"percentile\": 99.99}}}}]'; "
                           f"got {item!r}")
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise RunError(f"--recipe {label}: the recipe is not valid JSON ({exc})") from None
        chosen[label.strip()] = spec if isinstance(spec, list) else [spec]
    if not chosen:
        raise RunError("no recipe to run: give --recipes and/or --recipe")
    for label, spec in chosen.items():  # validate before any work
        try:
            snnbridge.build_recipe(spec)
        except snnbridge.SnnbridgeError as exc:
            raise RunError(f"recipe {label!r}: {exc}") from None
    return chosen


def resolve_best(args) -> tuple[list, list[int]]:
    try:
        spec = json.loads(args.best)
    except ValueError as exc:
        raise RunError(f"--best: the recipe is not valid JSON ({exc}); e.g. '[\"ltb\", \"ftbc\"]'") from None
    spec = spec if isinstance(spec, list) else [spec]
    if spec:
        try:
            snnbridge.build_recipe(spec)
        except snnbridge.SnnbridgeError as exc:
            raise RunError(f"--best: {exc}") from None
    if args.qcfs is not None:  # the training-free stack does not apply to a QCFS network
        return [], []
    return spec, (_int_list(args.best_timesteps, "best-timesteps") if spec else [])


def resolve_backends(args) -> list[str]:
    installed = snnbridge.get_registry().names("backend")
    if args.backends is None:
        found = [b for b in DEFAULT_BACKENDS if b in installed]
        for b in DEFAULT_BACKENDS:
            if b not in installed:
                print(f"WARNING: the {b!r} backend is not installed; skipping it (installed: {', '.join(installed)}). "
                      f"Install its plugin to include it, or pass --backends to choose explicitly.", flush=True)
        if not found:
            raise RunError(f"none of the default backends {', '.join(DEFAULT_BACKENDS)} is installed")
        return found
    wanted = _name_list(args.backends)
    missing = [b for b in wanted if b not in installed]
    if missing:
        raise RunError(f"backend(s) {', '.join(missing)} not installed (installed: {', '.join(installed) or 'none'}). "
                       "Install the plugin (pip install -e . in the snnbridge checkout registers the built-in ones) or "
                       "leave it out of --backends.")
    if not wanted:
        raise RunError("--backends is empty")
    return wanted


def load_factory(spec: str):
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise RunError(f"--model takes module:factory, e.g. {DEFAULT_MODEL}; got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RunError(f"--model {spec}: {type(exc).__name__}: {exc}") from None
    return factory


# -- training and evaluation -----------------------------------------------------------------------------
def train(model, x_u8, y, args, device, progress: bool, *, resume: dict | None = None,
          on_epoch=None) -> list[dict]:
    """SGD (Nesterov, one-cycle LR) on uint8 images with batch augmentation; returns per-epoch stats.

    ``on_epoch(state)``, when given, is called after every epoch with the training state
    (``epoch``, ``history``, ``optimizer``, ``scheduler``, ``generator``: plain tensors and
    numbers, loadable with ``torch.load(weights_only=True)``), so a caller can save it; passing
    that state back as ``resume`` (with the model's weights of that epoch already loaded)
    continues the run exactly where it stopped, same batches and learning rates.
    """
    if args.epochs == 0:  # an untrained network (e.g. to time the conversion alone)
        model.eval()
        return []
    g = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(x_u8) / args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.25)
    history: list[dict] = []
    first = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        g.set_state(resume["generator"])
        history, first = list(resume["history"]), int(resume["epoch"])
    model.train()
    for epoch in range(first, args.epochs):
        started = time.perf_counter()
        perm = torch.randperm(len(x_u8), generator=g)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{args.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for i in bar:
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = cdata.normalize(cdata.augment(x_u8[idx], g)).to(device)
            yb = y[idx].to(device)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        stats = {"epoch": epoch + 1, "loss": round(loss_sum / seen, 4), "train_acc": round(correct / seen, 4),
                 "seconds": round(time.perf_counter() - started, 2)}
        print(f"  epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.3f}, train acc {stats['train_acc']:.3f} "
              f"(augmented), {stats['seconds']:.1f} s", flush=True)
        history.append(stats)
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "history": list(history), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "generator": g.get_state()})
    model.eval()
    return history


def test_batches(x_u8, y, batch: int, device):
    """Normalised ``(images, labels)`` test batches."""
    for i in range(0, len(x_u8), batch):
        yield cdata.normalize(x_u8[i:i + batch]).to(device), y[i:i + batch]


def snn_curve(snn, x_u8, y, t_max: int, batch: int, device, progress: bool) -> list[float]:
    """Accuracy after each of 1..t_max steps, from one ``sweep`` per test batch (``snnbridge.accuracy_curve``)."""
    return snnbridge.accuracy_curve(snn, test_batches(x_u8, y, batch, device), [t_max], device=device,
                                    progress=progress)["curve"]


# -- output ----------------------------------------------------------------------------------------------
def format_table(results: dict) -> str:
    ts = results["config"]["timesteps"]
    rows = [["recipe", "backend"] + [f"T={t}" for t in ts]]
    for run in results["runs"]:
        rows.append([run["recipe"], run["backend"]] + [f"{100 * run['accuracy'][str(t)]:.2f}" for t in ts])
    rows.append(["ANN", "-"] + [f"{100 * results['ann']['test_accuracy']:.2f}"] * len(ts))
    return _render(rows, rules_after=(0, len(rows) - 2))


def _render(rows: list[list[str]], rules_after=(0,)) -> str:
    """Rows as aligned text columns (two label columns left-aligned), a rule after the given row indices."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if k in rules_after:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_headline(results: dict) -> str:
    """ANN next to the low-T stack at each of its T per backend, and the baselines at the same T."""
    ts = sorted({b["T"] for b in results["best"]})
    backends = list(dict.fromkeys(b["backend"] for b in results["best"]))
    rows = [["", "backend"] + [f"T={t}" for t in ts]]
    rows.append(["ANN", "-"] + [f"{100 * results['ann']['test_accuracy']:.2f}"] * len(ts))
    for b in backends:
        acc = {x["T"]: x["accuracy"] for x in results["best"] if x["backend"] == b}
        rows.append([f"best: {results['best'][0]['recipe']}", b] + [f"{100 * acc[t]:.2f}" for t in ts])
    for run in results["runs"]:  # the baselines on the first backend (every backend gives the same spikes)
        if run["backend"] == backends[0] and all(t <= len(run["curve"]) for t in ts):
            rows.append([f"baseline: {run['recipe']}", run["backend"]] + [f"{100 * run['curve'][t - 1]:.2f}"
                                                                          for t in ts])
    return _render(rows)


def backend_gaps(results: dict) -> dict[str, float]:
    """Per recipe run on several backends: the largest accuracy gap between backends at any step."""
    gaps = {}
    for r in dict.fromkeys(x["recipe"] for x in results["runs"]):
        curves = [x["curve"] for x in results["runs"] if x["recipe"] == r]
        if len(curves) > 1:
            gaps[r] = max(max(c[t] for c in curves) - min(c[t] for c in curves) for t in range(len(curves[0])))
    return gaps


def plot(results: dict, path: Path) -> None:
    """Accuracy vs T: one colour per recipe, one line style per backend (``snnbridge.plot_accuracy``)."""
    ts = results["config"]["timesteps"]
    recipes = list(dict.fromkeys(r["recipe"] for r in results["runs"]))
    backends = list(dict.fromkeys(r["backend"] for r in results["runs"]))
    curves = [{"label": f"{run['recipe']} / {run['backend']}", "timesteps": list(range(1, len(run["curve"]) + 1)),
               "accuracy": run["curve"], "marks": ts, "group": recipes.index(run["recipe"]),
               "variant": backends.index(run["backend"])} for run in results["runs"]]
    spreads = [f"{r}: {100 * g:.1f}" for r, g in backend_gaps(results).items()]
    note = ("largest gap between backends, points: " + "; ".join(spreads)) if spreads else None
    snnbridge.plot_accuracy(curves, path, ann_accuracy=results["ann"]["test_accuracy"], xlabel="time steps T",
                            title=f"CIFAR-10: SNN accuracy vs T ({results['data']['test_samples']} test images)",
                            note=note)


def versions() -> dict:
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "snnbridge": snnbridge.__version__}
    from importlib import metadata

    for dist in ("spikingjelly", "snntorch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# -- main ------------------------------------------------------------------------------------------------
class Clock:
    """Wall and process-CPU seconds per phase (CPU time shows how much a busy, shared machine slowed a phase)."""

    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def start(self, name: str):
        self._cur = (name, time.perf_counter(), time.process_time())

    def stop(self) -> float:
        name, w0, c0 = self._cur
        wall = time.perf_counter() - w0
        ph = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        ph["wall_s"] = round(ph["wall_s"] + wall, 2)
        ph["cpu_s"] = round(ph["cpu_s"] + time.process_time() - c0, 2)
        return wall

    def total(self) -> dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self._wall0, 2),
                "cpu_s": round(time.process_time() - self._cpu0, 2)}


def _training_meta(args, n_train: int) -> dict:
    meta = {"format": CHECKPOINT_FORMAT, "model": args.model, "epochs": args.epochs, "train_samples": n_train,
            "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed}
    if args.qcfs is not None:
        meta["prepare"] = _qcfs_recipe(args)
    return meta


def _qcfs_recipe(args) -> list:
    return [{"qcfs": {"levels": args.qcfs, "lambda_init": args.qcfs_lambda}}]


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    clock = Clock()
    load_start = _loadavg()
    progress = not args.no_progress
    torch.set_num_threads(max(1, args.threads))
    if args.qcfs is not None and args.qcfs < 1:
        raise RunError(f"--qcfs takes the number of quantization levels L >= 1 (e.g. 4 or 8), got {args.qcfs}")
    timesteps = _int_list(args.timesteps if args.timesteps is not None
                          else DEFAULT_TIMESTEPS["qcfs" if args.qcfs is not None else "relu"], "timesteps")
    t_max = timesteps[-1]
    for name in ("epochs", "train_samples", "test_samples", "calib_samples", "batch_size", "eval_batch_size"):
        if getattr(args, name) < (0 if name == "epochs" else 1):
            raise RunError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'epochs' else 'positive'}")
    recipes = resolve_recipes(args)
    backends = resolve_backends(args)
    best_recipe, best_ts = resolve_best(args)
    factory = load_factory(args.model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    device = torch.device(args.device)
    if load_start and os.cpu_count() and load_start[0] >= os.cpu_count() and device.type == "cpu":
        print(f"note: this machine is busy (load average {load_start[0]:.1f} on {os.cpu_count()} cores); timings will "
              f"be longer than on idle cores, and --threads 1 may run faster than {torch.get_num_threads()} threads "
              "here.", flush=True)
    out = Path(args.out if args.out is not None
               else "runs/cifar10" if args.qcfs is None else f"runs/cifar10-qcfs-L{args.qcfs}")
    out.mkdir(parents=True, exist_ok=True)

    # data: find / extract (once) / index, decode the test and calibration subsets ---------------------
    print("[1/4] data", flush=True)
    clock.start("data")
    try:
        kind, root = cdata.resolve(args.data, args.cache_dir)
        train_set, test_set = cdata.open_splits(kind, root)
    except (cdata.DataNotFoundError, cdata.DataLayoutError, cdata.UnsafeArchiveError) as exc:
        raise RunError(str(exc)) from None
    classes = list(train_set.classes)
    train_sub = cdata.seeded_subset(train_set, args.train_samples, args.seed)
    test_sub = cdata.seeded_subset(test_set, args.test_samples, args.seed + 1)
    calib_sub = cdata.seeded_subset(train_set, args.calib_samples, args.seed + 2)
    x_test, y_test = cdata.to_tensors(test_sub, progress, "decode test")
    x_calib, _ = cdata.to_tensors(calib_sub, progress, "decode calibration")
    clock.stop()
    print(f"  {kind} data at {root}: {len(train_set)} train / {len(test_set)} test images, {len(classes)} classes; "
          f"using {len(train_sub)} train, {len(test_sub)} test, {len(calib_sub)} calibration (random, seeded)",
          flush=True)

    # the ANN: load the checkpoint, or train (and save) -------------------------------------------------
    meta = _training_meta(args, len(train_sub))
    default_ckpt = args.checkpoint is None
    ckpt = out / "ann.pt" if default_ckpt else Path(args.checkpoint)
    torch.manual_seed(args.seed)
    model = factory(num_classes=len(classes)) if _accepts_num_classes(factory) else factory()
    if args.qcfs is not None:  # QCFS activations in place of the ReLUs, trained as such
        model = snnbridge.prepare(model, _qcfs_recipe(args))
    loaded, history = False, []
    if ckpt.is_file() and not args.retrain:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        same = saved.get("meta") == meta
        if same or not default_ckpt:
            model.load_state_dict(saved["state_dict"])
            loaded, history = True, saved.get("history", [])
            note = "" if same else f" (trained with {saved.get('meta')}, not the options of this run)"
            print(f"[2/4] loaded the trained ANN from {ckpt}{note}; pass --retrain to train again", flush=True)
        else:
            print(f"  {ckpt} was trained with other options ({saved.get('meta')}); training again", flush=True)
    model.to(device)
    if not loaded:
        print(f"[2/4] training {args.model} for {args.epochs} epoch(s) on {len(train_sub)} images", flush=True)
        clock.start("decode_train")
        x_train, y_train = cdata.to_tensors(train_sub, progress, "decode train")
        clock.stop()
        clock.start("train")
        history = train(model, x_train, y_train, args, device, progress)
        clock.stop()
        del x_train, y_train
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": meta,
                    "history": history, "classes": classes}, ckpt)
        print(f"  saved {ckpt}", flush=True)
    model.eval()
    clock.start("ann_eval")
    ann_acc = snnbridge.ann_accuracy(model, test_batches(x_test, y_test, args.eval_batch_size, device))
    clock.stop()
    print(f"  ANN test accuracy: {100 * ann_acc:.2f}% ({len(x_test)} images)", flush=True)

    # conversions: every recipe x backend, one sweep per test batch at the largest T --------------------
    print(f"[3/4] converting: {len(recipes)} recipe(s) x {len(backends)} backend(s), one sweep to T={t_max}",
          flush=True)
    calib_batches = [cdata.normalize(x_calib[i:i + 128]) for i in range(0, len(x_calib), 128)]
    runs = []
    for label, spec in recipes.items():
        for backend in backends:
            clock.start("convert")
            cpu0 = time.process_time()
            snn = snnbridge.convert(model, spec, calibration=calib_batches, backend=backend, timesteps=t_max,
                                    progress=progress, seed=args.seed)
            conv_s, conv_cpu = clock.stop(), time.process_time() - cpu0
            clock.start("sweep")
            cpu0 = time.process_time()
            curve = snn_curve(snn, x_test, y_test, t_max, args.eval_batch_size, device, progress)
            eval_s, eval_cpu = clock.stop(), time.process_time() - cpu0
            acc = {str(t): curve[t - 1] for t in timesteps}
            runs.append({"recipe": label, "recipe_spec": spec, "backend": backend, "timesteps": t_max,
                         "steps_run": snn.steps_run, "accuracy": acc, "curve": curve,
                         "conversion_seconds": round(conv_s, 3), "conversion_cpu_seconds": round(conv_cpu, 2),
                         "report_conversion_seconds": snn.report.get("conversion_seconds"),
                         "eval_seconds": round(eval_s, 2), "eval_cpu_seconds": round(eval_cpu, 2)})
            print(f"  {label:>14s} / {backend:<12s} " + "  ".join(f"T={t}: {100 * acc[str(t)]:.2f}%" for t in timesteps)
                  + f"   (convert {conv_s:.1f} s, sweep {eval_s:.1f} s)", flush=True)
            del snn

    # the best low-T stack: one conversion per T (on the first backend), moved to every other backend -----
    best = []
    if best_recipe:
        print(f"[3b/4] the low-T stack {json.dumps(best_recipe)}: one conversion per T in {best_ts}, then "
              f"snn.to_backend for {', '.join(backends[1:]) or 'no other backend'}", flush=True)
    for T in best_ts:
        clock.start("convert_best")
        snn = snnbridge.convert(model, best_recipe, calibration=calib_batches, backend=backends[0], timesteps=T,
                                progress=progress, seed=args.seed)
        conv_s = clock.stop()
        for backend in backends:
            clock.start("eval_best")
            moved = snn if backend == backends[0] else snn.to_backend(backend)
            acc = snnbridge.accuracy_curve(moved, test_batches(x_test, y_test, args.eval_batch_size, device), [T],
                                           device=device, progress=progress)["accuracy"][0]
            eval_s = clock.stop()
            best.append({"recipe": json.dumps(best_recipe), "recipe_spec": best_recipe, "T": T, "backend": backend,
                         "accuracy": acc, "steps_run": moved.steps_for(T), "conversion_seconds": round(conv_s, 2),
                         "converted_on": backends[0], "eval_seconds": round(eval_s, 2),
                         "chosen": {k: v for k, v in snn.report.items() if k.startswith("ltb_")}})
            print(f"  best stack T={T:<3d} / {backend:<12s} {100 * acc:.2f}%   (convert {conv_s:.1f} s on "
                  f"{backends[0]}, evaluate {eval_s:.1f} s)", flush=True)
            del moved
        del snn

    # outputs ------------------------------------------------------------------------------------------
    results = {
        "task": "cifar10",
        "config": {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "weight_decay": args.weight_decay, "timesteps": timesteps, "backends": backends,
                   "recipes": recipes, "eval_batch_size": args.eval_batch_size, "device": str(device),
                   "threads": torch.get_num_threads(), "argv": sys.argv[1:] if argv is None else list(argv)},
        "data": {"kind": kind, "root": str(root), "classes": classes, "train_total": len(train_set),
                 "test_total": len(test_set), "train_samples": len(train_sub), "test_samples": len(test_sub),
                 "calib_samples": len(calib_sub), "calib_batches": len(calib_batches),
                 "seeds": {"seed": args.seed, "train_subset": args.seed, "test_subset": args.seed + 1,
                           "calib_subset": args.seed + 2, "training": args.seed, "conversion": args.seed}},
        "ann": {"test_accuracy": ann_acc, "checkpoint": str(ckpt), "loaded_from_checkpoint": loaded,
                "training_history": history},
        "runs": runs,
        "best": best,
        "backend_max_gap": {},
        "timings": {},
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "loadavg_start": load_start},
    }
    results["backend_max_gap"] = backend_gaps(results)
    print("[4/4] results", flush=True)
    if best:
        print(format_headline(results))
        print()
    print(format_table(results))
    if results["backend_max_gap"]:
        print("largest accuracy gap between backends at any T (points): "
              + ", ".join(f"{r} {100 * g:.2f}" for r, g in results["backend_max_gap"].items()))
    clock.start("outputs")
    plot(results, out / "accuracy_vs_T.png")
    clock.stop()
    results["machine"]["loadavg_end"] = _loadavg()
    results["timings"] = {**{f"{k}_seconds": v["wall_s"] for k, v in clock.phases.items()},
                          "total_seconds": clock.total()["wall_s"],
                          "cpu_seconds": {**{k: v["cpu_s"] for k, v in clock.phases.items()},
                                          "total": clock.total()["cpu_s"]}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    t = results["timings"]
    print("wall time: " + ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in clock.phases.items())
          + f"; total {t['total_seconds']:.1f} s (load average at start {load_start})")
    print(f"wrote {out / 'results.json'} and {out / 'accuracy_vs_T.png'}")
    return results


def _accepts_num_classes(factory) -> bool:
    import inspect

    try:
        return "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


if __name__ == "__main__":
    main()
