"""The ``snnbridge`` command line: list plugins, convert an ANN, evaluate an SNN.

    snnbridge plugins [--json] [--all] [NAME ...]
    snnbridge convert --config recipe.yaml --model module:factory (--checkpoint ann.pt | --random-init) --data DATA
                      --out snn.pt [--timesteps T]
    snnbridge evaluate --snn snn.pt --data DATA [--report-timesteps 1,2,4,8,16,32] [--json out.json] [--plot out.png]
    snnbridge report snn.pt --data DATA [--model module:factory --checkpoint ann.pt] --out report/
    snnbridge report --config recipe.yaml --model module:factory (--checkpoint ann.pt | --random-init) --data DATA
                     --out report/
    snnbridge tune --model module:factory (--checkpoint ann.pt | --random-init) --data DATA --timesteps 4,8
                   [--budget SECONDS] --out tune/

A flag means the same in every command: ``--timesteps``/``-T`` is the T an SNN is converted
for; ``--report-timesteps`` the T values ``evaluate`` reports. Every ``convert`` and
``evaluate`` run writes a run record (:mod:`snnbridge.runrecord`) next to its results.

``torchrun --nproc_per_node=N -m snnbridge convert|evaluate ...`` runs the same command on N
processes (torch.distributed: gloo on CPU, NCCL on GPUs): each rank calibrates and evaluates
its shard of the images, the results are reduced over the ranks and equal one process's;
rank 0 prints and writes the files (docs/distributed.md).

Every user error (missing file, bad config, unknown plugin or option, ...) prints
``snnbridge: error: <message>`` to stderr and exits with status 2; ``--debug`` shows the
traceback instead. ``main(argv)`` returns the exit status (used by the console script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "snnbridge"

_KIND_TITLES = {"method": "Methods", "backend": "Backends", "training": "Training-side plugins",
                "broken": "Broken plugins (left out; the others work)"}


class CliError(Exception):
    """A user error found by the command line itself (bad argument, missing file, ...)."""


# =============================================================================================
# argument parsing
# =============================================================================================

_DESCRIPTION = """\
Convert trained PyTorch ANNs into spiking neural networks (SNNs) of real neurons.

examples:
  # which conversion methods and neuron backends are installed, with their options
  snnbridge plugins

  # convert: build the ANN with module:factory, load its weights, calibrate on 512 random
  # training images, and save the SNN (and snn.run.json: how to repeat this run exactly)
  snnbridge convert --config recipe.yaml --model examples.cifar10.model:make_model \\
      --checkpoint ann.pt --data cifar10-jpeg.tar.gz --timesteps 32 --out snn.pt

  # accuracy vs number of time steps T (one simulation per batch), with a JSON and a plot
  snnbridge evaluate --snn snn.pt --data cifar10-jpeg.tar.gz --samples 1000 \\
      --report-timesteps 1,2,4,8,16,32 --json acc.json --plot acc.png

  # the same on 2 processes (torch.distributed; results equal one process's)
  torchrun --nproc_per_node=2 -m snnbridge evaluate --snn snn.pt --data cifar10-jpeg.tar.gz
"""

_EPILOG = """\
Recipes name plugins: run `snnbridge plugins` to see the installed methods and backends and the
options each takes, and `snnbridge <command> --help` for a command's flags. A recipe file
(YAML or TOML):

  recipe:
    - robustnorm: {percentile: 99.9}
  backend: torch            # or {name: spikingjelly, ...backend options}
  timesteps: 32
"""

_PLUGINS_HELP = """\
List the installed plugins (entry-point group 'snnbridge'): name, distribution and version,
kind, the pipeline stages each implements, its summary and its options.

examples:
  snnbridge plugins                 # compact list
  snnbridge plugins --all           # with references, capabilities and option ranges
  snnbridge plugins robustnorm      # one plugin
  snnbridge plugins --json          # machine-readable
"""

_CONVERT_HELP = """\
Convert an ANN into an SNN with a recipe file and save it (snnbridge.save format).

The ANN is built by importing MODULE and calling FACTORY() (the current directory is
importable; MODULE may also be a path to a .py file), then its weights are loaded from
--checkpoint (a state_dict, or a dict with a 'model' or 'state_dict' entry; required, or
'checkpoint:' in the config, or --random-init to convert the untrained model on purpose).
Calibration images are a seeded random sample from --data: an image folder (<class>/<image>)
or a .tar/.tar.gz of one; a train/ split is used when there is one. Flags override the config.
Next to --out (snn.pt) goes snn.run.json: the command line, the resolved recipe, seeds, the
calibration image indices, data and normalisation, the checkpoint's sha256, backend, T and
package versions. The same command on the same data gives the same SNN, bit for bit.
Under torchrun (torchrun --nproc_per_node=N -m snnbridge convert ...) each rank calibrates on
its shard of the sample, every N-th image, in batches of ceil(B / N), so the ranks' batch i
together hold one process's batch i; rank 0 saves the SNN (checked identical on every rank).

example:
  snnbridge convert --config recipe.yaml --model examples.cifar10.model:make_model \\
      --checkpoint ann.pt --data cifar10-jpeg.tar.gz --calib-samples 512 --out snn.pt
"""

_EVALUATE_HELP = """\
Accuracy vs number of time steps T on an image folder. One simulation per batch at the
largest T gives the accuracy at every requested T (the running mean of the output). The
SNN comes from --snn (saved by `snnbridge convert`), or is converted on the fly from
--config/--model/--checkpoint (calibrating on the train split of --data). When the ANN is
given (--model, with --checkpoint), its accuracy is shown too. 'steps run' counts the
uncounted warm-up steps some methods simulate before the T counted ones. --timesteps is the
conversion T (as in `snnbridge convert`); --report-timesteps the T values reported. An SNN
with T-specific corrections (per-step tables, e.g. ftbc) cannot report past the T it was
calibrated for: convert with that T. Next to --json / --plot goes <name>.run.json (with
--json - the record is the "run" entry of the printed JSON). Under torchrun
(torchrun --nproc_per_node=N -m snnbridge evaluate ...) each rank evaluates every N-th image
(B / N per batch) and the correct counts are summed: the same accuracies as one process; rank
0 prints and writes the files.

examples:
  snnbridge evaluate --snn snn.pt --data cifar10-jpeg.tar.gz --samples 1000 --plot acc.png
  snnbridge evaluate --config recipe.yaml --model examples.cifar10.model:make_model \\
      --checkpoint ann.pt --data cifar10-jpeg.tar.gz --timesteps 32 \\
      --report-timesteps 1,2,4,8,16,32 --json acc.json
"""


_REPORT_HELP = """\
The conversion report of an SNN (snnbridge.report): per activation site the threshold, the
firing rate, the silent neurons, the error against the ANN split into clipping and
quantization error, the offset spikes and each site's share of the error; accuracy vs T
(one simulation per batch); synaptic operations and energy (snnbridge.energy, on the first
batch). Written into the folder --out: report.json, report.html (one self-contained page,
plots embedded: open it in any browser, offline), the plots as PNG files and
report.run.json (how to repeat the run).

The SNN is SNN_FILE (saved by `snnbridge convert`; give the ANN with --model and
--checkpoint for the comparisons), or is converted now from --config/--model/--checkpoint
(calibrating on the train split of --data, as `snnbridge convert` does). The report uses the
--split folder of --data (default: test).

examples:
  snnbridge report snn.pt --data cifar10-jpeg.tar.gz --model examples.cifar10.model:make_model \\
      --checkpoint ann.pt --samples 1000 --out report/
  snnbridge report --config recipe.yaml --model examples.cifar10.model:make_model \\
      --checkpoint ann.pt --data cifar10-jpeg.tar.gz --timesteps 32 --out report/
"""


_TUNE_HELP = """\
Find the best recipe per T (snnbridge.tune). Candidate recipes are built from the installed
plugins (training-free methods for a plain ReLU network, the QCFS family for a network trained
with QCFS activations, alone and stacked, with the options each plugin lists), or read from
--candidates FILE; a --config's recipe is tried first. Each is converted on the calibration
images drawn from the train split of --data, less the last --holdout-batches batches, which
only score it: accuracy on their labels (--score). Candidates run cheap-first until --budget
seconds are spent. Written into --out: tune.json (every score), tune.png (score vs T and vs
conversion time), tune.run.json and best-T<T>.yaml per T: a config file with the winning
recipe, the model, checkpoint and data, for `snnbridge convert --config best-T8.yaml --out
snn.pt`.

examples:
  snnbridge tune --model examples.cifar10.model:make_model --checkpoint ann.pt \\
      --data cifar10-jpeg.tar.gz --timesteps 4,8,16 --budget 600 --out tune/
  snnbridge convert --config tune/best-T8.yaml --out snn.pt
"""


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image preprocessing (defaults: the SNN file's or config's values, else CIFAR-10)")
    g.add_argument("--image-size", type=int, metavar="PIXELS", help="resize images to PIXELS x PIXELS")
    g.add_argument("--mean", type=_floats, metavar="M1,M2,M3", help="per-channel mean (one value for grey-scale)")
    g.add_argument("--std", type=_floats, metavar="S1,S2,S3", help="per-channel standard deviation")


def _add_model_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--config", metavar="RECIPE", required=required,
                   help="recipe file (.yaml, .yml or .toml)" + ("" if required else "; convert on the fly instead of "
                                                                                    "--snn"))
    p.add_argument("--model", metavar="MODULE:FACTORY",
                   help="build the ANN by calling FACTORY() from MODULE, e.g. examples.cifar10.model:make_model "
                        "(may also be given as 'model:' in the config)")
    p.add_argument("--checkpoint", metavar="FILE", help="ANN weights: a state_dict or a dict with a "
                                                        "'model'/'state_dict' "
                   "entry")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint holding arbitrary Python objects (full pickle: only for files you trust)")
    p.add_argument("--random-init", action="store_true",
                   help="use the model as FACTORY() builds it, without a checkpoint (its random initialisation: for "
                        "tests and timing); without this flag a checkpoint is required")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """--seed, --device and --no-progress of the commands that run an SNN on data (evaluate, report, tune)."""
    p.add_argument("--seed", type=int, help="seed for sampling, model construction and conversion (default: the "
                   "config's 'seed', else 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_conversion_options(p: argparse.ArgumentParser, evaluate: bool = False) -> None:
    g = p.add_argument_group("conversion (override the config)" + (" with --config" if evaluate else ""))
    g.add_argument("--backend", metavar="NAME", help="neuron backend (see `snnbridge plugins`)")
    g.add_argument("--timesteps", "-T", dest="conv_timesteps", type=_timesteps_flag if evaluate else _positive_int,
                   metavar="T", help="counted simulation steps T the SNN is converted for (default: the config's)")
    if evaluate:  # the old spelling, for one release (see _timestep_flags)
        g.add_argument("--convert-timesteps", dest="old_convert_timesteps", type=_positive_int, help=argparse.SUPPRESS)
    g.add_argument("--calib-samples", type=_positive_int, default=512, metavar="N",
                   help="calibration images drawn at random from --data (default: 512)")
    g.add_argument("--calib-split", default="train", metavar="SPLIT",
                   help="split folder used for calibration when --data has one (default: train)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser("plugins", help="list installed methods and backends with their options",
                       description=_PLUGINS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="show only these plugins")
    p.add_argument("--json", action="store_true", help="print a JSON list (all details)")
    p.add_argument("--all", action="store_true", help="show every detail: reference, capabilities, option ranges")
    p.add_argument("--markdown", action="store_true",
                   help="print the method table (plugin, paper, stages, options, stacks with, T-specific) in Markdown")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("convert", help="convert an ANN into an SNN with a recipe and save it",
                       description=_CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_options(p, required=True)
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="where to save the SNN (e.g. snn.pt)")
    p.add_argument("--data", metavar="PATH", help="calibration images: image folder or .tar.gz (may also be given as "
                   "'data:' in the config)")
    p.add_argument("--input-shape", type=_ints, metavar="C,H,W",
                   help="input shape without batch, when the recipe needs no data and --data is not given")
    _add_conversion_options(p)
    p.add_argument("--seed", type=int, help="seed for model construction, sampling and conversion (default: the "
                   "config's 'seed', else 0)")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="B", help="calibration batch size "
                   "(default: 128; under torchrun all ranks together, ceil(B / ranks) each)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto = cuda if available)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every site's neuron parameters")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    _add_data_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("evaluate", help="accuracy vs number of time steps T on an image folder",
                       description=_EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snn", metavar="FILE", help="an SNN saved by `snnbridge convert`")
    _add_model_options(p, required=False)
    p.add_argument("--data", metavar="PATH", help="image folder or .tar.gz (uses its --split folder when it has one)")
    p.add_argument("--split", default="test", help="split folder to evaluate on (default: test)")
    p.add_argument("--samples", type=_positive_int, metavar="N", help="evaluate on N images drawn at random "
                   "(default: all)")
    p.add_argument("--report-timesteps", type=_int_list, metavar="T1,T2,...",
                   help="the T values to report (default: 1,2,4,... up to the SNN's T); one run at the largest")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="B",
                   help="default: 128 (under torchrun all ranks together, ceil(B / ranks) each)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for stdout)")
    p.add_argument("--plot", metavar="FILE", help="write a plot of accuracy vs T (PNG, PDF or SVG)")
    _add_run_options(p)
    _add_conversion_options(p, evaluate=True)
    _add_data_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="a conversion report (per-site errors, firing rates, accuracy vs T, SynOps) as "
                                      "JSON and one HTML page", description=_REPORT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snn", nargs="?", metavar="SNN_FILE", help="an SNN saved by `snnbridge convert` (or give --config "
                                                              "to convert now)")
    p.add_argument("--snn", dest="snn_flag", metavar="FILE", help="the same as SNN_FILE (as in `snnbridge evaluate`)")
    _add_model_options(p, required=False)
    p.add_argument("--data", metavar="PATH", help="image folder or .tar.gz (uses its --split folder when it has one; "
                   "the train split calibrates a --config conversion)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for report.json, report.html and the "
                                                                       "plots")
    p.add_argument("--split", default="test", help="split folder to report on (default: test)")
    p.add_argument("--samples", type=_positive_int, metavar="N", help="report on N images drawn at random "
                   "(default: all)")
    p.add_argument("--report-timesteps", type=_int_list, metavar="T1,T2,...",
                   help="the T values of the accuracy curve (default: 1,2,4,... up to the SNN's T); everything else "
                        "is measured at the largest")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="B", help="default: 128")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    _add_run_options(p)
    p.add_argument("--energy", default="fp32_45nm", metavar="PRESET",
                   help="energy per operation for the SynOps part: fp32_45nm (default), fp16_45nm, int8_45nm "
                        "(Horowitz, ISSCC 2014), or 'none' to leave it out")
    _add_conversion_options(p)
    _add_data_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("tune", help="try candidate recipes on held-out calibration images and keep the best per T",
                       description=_TUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_options(p, required=False)
    p.add_argument("--data", metavar="PATH", help="image folder or .tar.gz (its train split when it has one)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for tune.json, tune.png and the "
                                                                       "best-T<T>.yaml files")
    p.add_argument("--timesteps", "-T", dest="tune_timesteps", type=_int_list, default=[4, 8], metavar="T1,T2,...",
                   help="the T values to find a recipe for (default: 4,8)")
    p.add_argument("--candidates", metavar="FILE", help="a .yaml/.toml file with 'candidates: [recipe, ...]' to try "
                                                        "instead of the automatic ones")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="start no new candidate after this many seconds "
                                                                  "(default: try all)")
    p.add_argument("--holdout-batches", type=_positive_int, default=1, metavar="N",
                   help="calibration batches that only score the candidates (default: 1)")
    p.add_argument("--score", choices=("auto", "accuracy", "agreement"), default="auto",
                   help="accuracy on the held-out labels, or agreement with the ANN's class (default: auto = "
                        "accuracy)")
    p.add_argument("--max-stack", type=_positive_int, default=3, metavar="N",
                   help="most plugins in an automatic candidate (default: 3)")
    p.add_argument("--convert-per-t", action="store_true", default=None,
                   help="convert every candidate for each T (default: only T-specific ones and those whose SNN "
                        "depends on the conversion's T; the others are converted once and scored at every T)")
    p.add_argument("--backend", metavar="NAME", help="neuron backend (default: the config's, else torch)")
    p.add_argument("--calib-samples", type=_positive_int, default=512, metavar="N",
                   help="calibration images drawn at random from --data, held-out ones included (default: 512)")
    p.add_argument("--calib-split", default="train", metavar="SPLIT",
                   help="split folder of --data to draw them from (default: train)")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="B", help="default: 128")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    _add_run_options(p)
    _add_data_options(p)
    p.set_defaults(func=cmd_tune, conv_timesteps=None)
    return parser


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.5,0.5, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 3,32,32, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    return sorted(set(_ints(text)))


class _OldTimestepList(list):
    """``evaluate --timesteps 1,2,8``: the old meaning (T values to report), accepted for one release."""


def _timesteps_flag(text: str) -> int | list[int]:
    """``evaluate --timesteps``: a conversion T, or (deprecated) a comma-separated list of T values to report."""
    if "," in text:
        return _OldTimestepList(_int_list(text))
    return _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


# =============================================================================================
# entry point
# =============================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    from .errors import SnnbridgeError

    try:
        with _distributed(args):
            return int(args.func(args) or 0)
    except (SnnbridgeError, CliError) as exc:
        if args.debug:
            raise
        who = f" (rank {_rank()})" if _rank() else ""
        print(f"{PROG}: error{who}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


#: commands that run on every rank under torchrun, sharding their images
_DISTRIBUTED_COMMANDS = ("convert", "evaluate")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise), known before the process group exists."""
    from .distributed import launched_by_torchrun

    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


@contextlib.contextmanager
def _distributed(args):
    """Under torchrun: join the process group (convert, evaluate), keep stdout to rank 0, leave the group at the end."""
    from . import distributed

    if not distributed.launched_by_torchrun():
        yield
        return
    if args.command not in (*_DISTRIBUTED_COMMANDS, "plugins"):  # each rank would do all the work and write it
        raise CliError(f"`snnbridge {args.command}` runs in one process; start it without torchrun (`snnbridge "
                       "convert` and `snnbridge evaluate` run under torchrun).")
    import torch.distributed as dist

    joined = args.command in _DISTRIBUTED_COMMANDS and not dist.is_initialized()
    if joined:
        distributed.init_from_environment()
    try:
        with contextlib.ExitStack() as stack:
            if _rank() != 0:  # one copy of every table and message: rank 0's
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _warn(message: str) -> None:
    if _rank() == 0:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty() and _rank() == 0


def _per_rank_batch(batch_size: int, n_images: int, what: str) -> int:
    """Batch size on each rank: ``ceil(B / ranks)``, with a note when the union batches cannot be one process's."""
    from . import distributed

    world = distributed.world_size()
    if world == 1:
        return batch_size
    per_rank = -(-batch_size // world)
    if batch_size % world:
        _warn(f"--batch-size {batch_size} is not a multiple of the {world} ranks: each rank takes {per_rank}, so a "
              f"batch of all ranks holds {per_rank * world} {what} images; give a multiple of {world} for the batches "
              "of one process.")
    if n_images % world:
        _warn(f"{n_images} {what} images do not split evenly over {world} ranks: DistributedSampler repeats "
              f"{world - n_images % world} of them on the last ranks"
              + (" (left out of the counts)." if what == "evaluation" else
                 f"; give a multiple of {world} to calibrate on exactly one process's images."))
    return per_rank


def _distributed_record() -> dict | None:
    """Ranks and communication backend for a run record (None in one process)."""
    from . import distributed

    if not distributed.active():
        return None
    import torch.distributed as dist

    return {"ranks": distributed.world_size(), "backend": str(dist.get_backend())}


# =============================================================================================
# snnbridge plugins
# =============================================================================================


def _fmt_default(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def cmd_plugins(args) -> int:
    from .plugin_manager import get_registry

    if args.markdown:
        from .catalog import markdown, method_rows

        rows = method_rows()
        if args.names:
            wanted = {get_registry().canonical(n) for n in args.names}
            rows = [r for r in rows if r["plugin"] in wanted]
        print(markdown(rows))
        return 0
    records = get_registry().records(args.names)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    width = max(60, min(110, shutil.get_terminal_size((100, 20)).columns))
    from . import __version__

    if not args.names:
        _say(f"snnbridge {__version__}: {len(records)} plugins installed (entry-point group 'snnbridge')")
    kind = None
    name_w = max([14] + [len(r["name"]) for r in records])
    for r in records:
        if r["kind"] != kind:
            kind = r["kind"]
            _say(f"\n{_KIND_TITLES.get(kind, kind)}:")
        origin = r["distribution"] + (f" {r['version']}" if r["version"] else "")
        if r["broken"]:
            _say(f"  {r['name']:<{name_w}} {origin:<22} BROKEN")
            for line in textwrap.wrap(r["broken"], width - 6):
                _say(f"      {line}")
            continue
        flags = ("  [needs data]" if r["needs_data"] is True else "") + ("  [T-specific]" if r["t_specific"] else "")
        _say(f"  {r['name']:<{name_w}} {origin:<22} stages: {', '.join(r['stages']) or '-'}{flags}")
        for line in textwrap.wrap(r["summary"], width - 6) or ["(no summary)"]:
            _say(f"      {line}")
        if args.all:
            if r["reference"]:
                for i, line in enumerate(textwrap.wrap(r["reference"], width - 17, break_on_hyphens=False)):
                    _say(f"      {'reference: ' if i == 0 else ' ' * 11}{line}")
            caps = [f"{k} {', '.join(r[k])}" for k in ("provides", "fallback", "requires", "conflicts", "after")
                    if r[k]]
            if r["aliases"]:
                caps.append(f"also named {', '.join(r['aliases'])}")
            if caps:
                _say(f"      capabilities: {'; '.join(caps)}")
        if not r["options"]:
            _say("      options: none")
            continue
        _say("      options:")
        opt_w = max(len(o["name"]) for o in r["options"])  # not name_w: that one aligns the plugin rows
        type_w = max(len(o["type"]) for o in r["options"])
        defaults = ["(required)" if o["required"] else "= " + _fmt_default(o["default"]) for o in r["options"]]
        default_w = max(map(len, defaults))
        for o, default in zip(r["options"], defaults):
            head = f"        {o['name']:<{opt_w}}  {o['type']:<{type_w}}  {default:<{default_w}}  "
            avail = max(30, width - len(head))
            lines = textwrap.wrap(o["help"], avail) or [""]
            extras = []
            if args.all and o["range"]:
                extras.append(f"[{o['range']}]")
            if args.all and o["choices"]:
                extras.append(f"[one of {', '.join(map(str, o['choices']))}]")
            for extra in extras:  # kept whole, on the last line if it fits
                if not lines[-1]:
                    lines[-1] = extra
                elif len(lines[-1]) + 1 + len(extra) <= avail:
                    lines[-1] += " " + extra
                else:
                    lines.append(extra)
            _say(head + lines[0])
            for line in lines[1:]:
                _say(" " * len(head) + line)
    if not args.names:
        _say("\nUse a method in a recipe by name, with options: recipe: [{robustnorm: {percentile: 99.9}}];\n"
             "a backend with --backend NAME or `backend: {name: NAME, ...options}` in the config;\n"
             "training plugins with snnbridge.training_loss(['tet', {'gsr': {'lam': 0.01}}]) (docs/training.md).")
    return 0


# =============================================================================================
# model, checkpoint, config
# =============================================================================================


class _Setup:
    """Model, recipe and data settings from the config file (validated as a whole) and the flags (flags win)."""

    def __init__(self, args):
        from .recipe import load_config

        self.config_path = args.config
        self.cfg = load_config(args.config) if args.config else None
        cfg = self.cfg
        self.model_spec: str | None = args.model or (cfg.model if cfg else None)
        self.checkpoint = args.checkpoint or (cfg.checkpoint if cfg else None)
        data = cfg.data if cfg else None
        self.data_path = getattr(args, "data", None) or (data.path if data else None)
        self.norm = {k: getattr(data, k) for k in ("image_size", "mean", "std")
                     if data and getattr(data, k) is not None}
        if cfg:
            self.backend = args.backend or cfg.backend
            self.backend_options = cfg.backend_options if self.backend == cfg.backend else {}
            if args.backend and args.backend != cfg.backend and cfg.backend_options:
                _warn(f"--backend {args.backend} replaces the config's backend {cfg.backend!r}; its options "
                      f"({', '.join(cfg.backend_options)}) are not used.")
            self.timesteps = args.conv_timesteps or cfg.timesteps
            self.disable = cfg.disable
        else:
            self.backend, self.backend_options, self.timesteps = args.backend or "torch", {}, args.conv_timesteps or 32
            self.disable = []
        if args.seed is None:  # the config's seed, unless --seed says otherwise
            args.seed = cfg.seed if cfg else 0


def _data_settings(args, *layers: dict) -> dict[str, Any]:
    """image_size / mean / std: flags, then the given layers (config, saved SNN), then CIFAR-10 defaults."""
    from .data import CIFAR10_MEAN, CIFAR10_STD

    out: dict[str, Any] = {"image_size": None, "mean": CIFAR10_MEAN, "std": CIFAR10_STD}
    for layer in reversed(layers):
        out.update({k: v for k, v in (layer or {}).items() if k in out and v is not None})
    for key in out:
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    out["mean"] = [float(v) for v in out["mean"]]
    out["std"] = [float(v) for v in out["std"]]
    return out


def _device(name: str):
    import torch

    from . import distributed

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise CliError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps ...).") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available here; use --device cpu.")
    if dev.type == "cuda" and dev.index is None and distributed.active():
        dev = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK, set by the group)
    return dev


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# =============================================================================================
# conversion (shared by convert and evaluate --config)
# =============================================================================================


def _require_weights(args, setup: _Setup) -> None:
    """A checkpoint (``--checkpoint`` or the config's ``checkpoint:``) or an explicit ``--random-init``."""
    if setup.checkpoint and args.random_init:
        where = "--checkpoint" if args.checkpoint else f"'checkpoint:' in {setup.config_path}"
        raise CliError(f"--random-init and {where} contradict each other: drop --random-init to use the trained "
                       "weights, or drop the checkpoint to use the untrained model.")
    if not setup.checkpoint and not args.random_init:
        raise CliError(f"no checkpoint for {setup.model_spec}: without one its random initialisation would be used. "
                       "Give --checkpoint FILE (or 'checkpoint: FILE' in the config) with the trained weights, or "
                       "--random-init to use the untrained model on purpose.")
    if setup.checkpoint and not Path(setup.checkpoint).is_file():
        raise CliError(f"checkpoint {setup.checkpoint!r} does not exist; give the file saved with "
                       "torch.save(model.state_dict(), ...).")


def _build_ann(args, setup: _Setup):
    """The ANN from ``--model`` (seeded construction) with the checkpoint's weights, in eval mode."""
    import torch

    from .loading import load_checkpoint, load_model

    if not setup.model_spec:
        raise CliError("give the model with --model MODULE:FACTORY (or `model:` in the config file).")
    torch.manual_seed(args.seed)
    ann = load_model(setup.model_spec)
    if setup.checkpoint:
        load_checkpoint(ann, setup.checkpoint, trust=args.trust_checkpoint)
    return ann.eval()


def _model_record(args, setup: _Setup) -> dict:
    """The ANN's part of a run record: factory, checkpoint (path and sha256), whether it is untrained."""
    from .runrecord import sha256_file

    ckpt = setup.checkpoint
    return {"spec": setup.model_spec,
            "architecture": _architecture_ref(setup.model_spec) if setup.model_spec else None,
            "checkpoint": ckpt, "checkpoint_resolved": str(Path(ckpt).resolve()) if ckpt else None,
            "checkpoint_sha256": sha256_file(ckpt) if ckpt else None, "random_init": not ckpt,
            "trust_checkpoint": bool(args.trust_checkpoint)}


def _convert(args, setup: _Setup, device, progress: bool, before_work=None):
    """Build, load, calibrate and convert; return (snn, ann, metadata).

    ``before_work(recipe)`` runs after every check of the set-up and before any model is
    built (evaluate's checks of the reported T values).
    """
    import torch

    from . import distributed
    from .convert import convert
    from .data import open_image_folder
    from .errors import CalibrationError
    from .factory import make_neuron_factory
    from .recipe import build_recipe

    if setup.cfg is None:
        raise CliError("give --config RECIPE (a .yaml or .toml recipe file) to convert.")
    if not setup.model_spec:
        raise CliError("give --model MODULE:FACTORY (or 'model:' in the config) to say how to build the ANN.")
    _require_weights(args, setup)
    recipe = build_recipe(setup.cfg.recipe, disable=setup.disable)  # validate everything before any work
    factory = make_neuron_factory(setup.backend, setup.backend_options, recipe.registry)
    needing = recipe.needs_data()
    if needing and not setup.data_path:
        raise CliError(f"the recipe's plugin {needing[0]!r} needs calibration images: add --data PATH (an image folder "
                       "or .tar.gz, with a train/ split or <class>/<image> files).")
    if before_work is not None:
        before_work(recipe)

    ann = _build_ann(args, setup).to(device)
    norm = _data_settings(args, setup.norm)

    calibration = None
    example = None
    calib_desc = None
    classes = None
    if setup.data_path:
        data = open_image_folder(setup.data_path, args.calib_split, **norm)
        classes = data.classes
        indices = data.sample(args.calib_samples, seed=args.seed)
        per_rank = _per_rank_batch(args.batch_size, len(indices), "calibration")
        calibration = [x for x, _ in data.batches(indices, per_rank, workers=args.workers,
                                                      pin_memory=device.type == "cuda", shard=distributed.active())]
        calib_desc = {"path": str(setup.data_path), "split": data.split, "samples": len(indices), "seed": args.seed,
                      "images_available": len(data), "batch_size": args.batch_size, "indices": indices}
        if distributed.active():
            calib_desc["batch_size_per_rank"] = per_rank
    elif getattr(args, "input_shape", None):
        example = torch.zeros(1, *args.input_shape, device=device)
    else:
        raise CliError("give --data PATH (images to learn the input shape from) or --input-shape C,H,W.")

    try:
        snn = convert(ann, recipe, calibration=calibration, backend=setup.backend, timesteps=setup.timesteps,
                      backend_options=setup.backend_options, example_input=example, progress=progress, seed=args.seed)
    except (RuntimeError, CalibrationError) as exc:
        cause = exc if isinstance(exc, RuntimeError) else exc.__cause__
        if not isinstance(cause, RuntimeError):  # a calibration problem of its own: its message names the fix
            raise
        first = calibration[0] if calibration else example
        assert first is not None  # the data or --input-shape branch above set one
        shape = tuple(first.shape)
        raise CliError(f"the model failed on inputs shaped {list(shape)}: {_first_line(cause)}. Check that the data "
                       "(--image-size, --mean/--std, grey-scale or RGB) matches what the model was trained on; "
                       "--debug shows the traceback.") from exc
    snn.architecture = _architecture_ref(setup.model_spec) if setup.model_spec else None
    metadata = {"model": setup.model_spec, "checkpoint": setup.checkpoint, "config": setup.config_path,
                "data": norm, "classes": classes, "calibration": calib_desc,
                "conversion": _conversion_record(args, setup, recipe, factory, norm, classes, calib_desc, device)}
    return snn, ann, metadata


def _conversion_record(args, setup: _Setup, recipe, factory, norm: dict, classes, calib: dict | None, device) -> dict:
    """Everything that decides the converted SNN, for the run record (plain data)."""
    from .runrecord import sha256_file

    config = setup.config_path
    return {
        "config": {"path": config, "sha256": sha256_file(config)} if config else None,
        "recipe": recipe.to_list(), "backend": {"name": factory.backend, "options": dict(factory.options)},
        "timesteps": setup.timesteps, "model": _model_record(args, setup),
        "seeds": {"model_init": args.seed, "calibration_sample": args.seed, "conversion": args.seed},
        "data": ({"path": str(setup.data_path), "path_resolved": str(Path(str(setup.data_path)).resolve()),
                  "split": calib["split"], "classes": classes, "normalisation": norm} if calib else None),
        "input_shape": list(args.input_shape) if getattr(args, "input_shape", None) and not calib else None,
        "calibration": calib, "disabled_plugins": list(setup.disable), "device": str(device),
        "distributed": _distributed_record(),
    }


def _architecture_ref(spec: str) -> str:
    """``--model`` as the saved SNN records it: a file path made absolute (loading works from any folder)."""
    module, _, attr = spec.rpartition(":")
    if module.endswith(".py") or "/" in module or os.sep in module:
        return f"{Path(module).resolve()}:{attr}"
    return spec


def _presim_text(snn) -> str:
    """'' or a description of the uncounted pre-simulation steps."""
    parts = []
    if snn.warmup:
        parts.append(f"+{snn.warmup} uncounted network warm-up steps")
    lookahead = getattr(snn, "lookahead", 0)
    if lookahead:
        parts.append(f"+{lookahead} uncounted per-layer look-ahead steps")
    return ", ".join(parts)


def _thresholds(snn) -> list[float]:
    out = []
    for spec in snn.specs.values():
        th = spec.threshold
        out.append(th if isinstance(th, float) else float(th.mean()))
    return out


def _recipe_text(recipe: list) -> str:
    parts = []
    for entry in recipe:
        if isinstance(entry, dict):
            for name, opts in entry.items():
                parts.append(name + (" {" + ", ".join(f"{k}: {_fmt_default(v)}" for k, v in (opts or {}).items()) + "}"
                                     if opts else ""))
        else:
            parts.append(str(entry))
    return ", ".join(parts)


def _print_report(snn, seconds: float | None, calib: dict | None, verbose: bool) -> None:
    specs = snn.specs
    report = snn.report or {}
    _say(f"recipe:      {_recipe_text(snn.recipe)}")
    _say(f"backend:     {snn.backend_name}")
    sites = list(specs)
    shown = ", ".join(sites[:6]) + (f", ... ({len(sites) - 6} more)" if len(sites) > 6 else "")
    _say(f"sites:       {len(sites)} ({shown})")
    ths = sorted(_thresholds(snn))
    if ths:
        per_channel = sum(1 for s in specs.values() if s.per_channel)
        kind = "layer-wise" if not per_channel else (f"{per_channel} of {len(ths)} per-channel (channel means)")
        _say(f"thresholds:  min {ths[0]:.4g}, median {ths[len(ths) // 2]:.4g}, max {ths[-1]:.4g} ({kind})")
    shifted = [n for n, s in specs.items() if not (isinstance(s.v0, float) and s.v0 == 0.0)]
    biased = [n for n, s in specs.items() if s.step_bias is not None]
    if shifted or biased:
        _say(f"neurons:     initial potential set at {len(shifted)} site(s), per-step bias at {len(biased)} site(s)")
    _say(f"time steps:  T = {snn.timesteps} counted, {snn.steps_run} steps run per input"
         + (f" ({_presim_text(snn)})" if snn.steps_run != snn.timesteps else ""))
    if calib:
        split = f"/{calib['split']}" if calib.get("split") else ""
        _say(f"calibration: {calib['samples']} of {calib['images_available']} images from {calib['path']}{split} "
             f"(random sample, seed {calib['seed']})")
    if seconds is not None:
        conv = report.get("conversion_seconds")
        _say(f"time:        {conv if conv is not None else seconds:.2f} s conversion"
             + (f", {seconds:.2f} s in total" if conv is not None else ""))
    for note in report.get("notes") or []:
        _say(f"note:        {note}")
    if verbose:
        _say("\n  site                      kind       shape              threshold       v0")
        for name, spec in specs.items():
            site = snn.sites[name]
            d = spec.describe()
            th = d["threshold"] if isinstance(d["threshold"], float) else d["threshold"]["mean"]
            v0 = d["v0"] if isinstance(d["v0"], float) else d["v0"]["mean"]
            shape = "x".join(map(str, site.info.shape)) if site.info.shape else "?"
            _say(f"  {name:<25} {site.info.kind:<10} {shape:<18} {th:<10.4g}{'*' if spec.per_channel else ' '}     "
                 f"{v0:.4g}")


def cmd_convert(args) -> int:
    from . import runrecord
    from .io import save

    started, started_at = time.perf_counter(), runrecord.now()
    setup = _Setup(args)
    out = Path(args.out)
    if out.is_dir():
        raise CliError(f"--out {args.out!r} is a folder; give a file name such as {args.out.rstrip('/')}/snn.pt.")
    device = _device(args.device)
    snn, _, metadata = _convert(args, setup, device, _progress(args))
    _print_report(snn, time.perf_counter() - started, metadata["calibration"], args.verbose)
    record_file = runrecord.record_path(out)
    record = {**runrecord.header("convert", args.argv), "seed": args.seed, **metadata["conversion"],
              "output": {"snn": str(out), "run_record": str(record_file)},
              runrecord.TIMING_KEY: {"started_at": started_at, "finished_at": runrecord.now(),
                                     "seconds": round(time.perf_counter() - started, 3),
                                     "conversion_seconds": (snn.report or {}).get("conversion_seconds")}}
    record = json.loads(json.dumps(record, default=str))  # plain data, also inside the SNN file
    if _rank() != 0:  # the SNN is the same on every rank (checked): rank 0 writes it
        return 0
    snn.to("cpu")
    save(snn, out, metadata={**{k: v for k, v in metadata.items() if k != "conversion"}, "run": record})
    _write(str(record_file), lambda p: runrecord.write(record, p))
    _say(f"saved:       {out} ({out.stat().st_size / 1024:.1f} KiB); evaluate it with "
         f"`snnbridge evaluate --snn {out} --data ...`")
    _say(f"run record:  {record_file} (command, recipe, seeds, image indices, checkpoint sha256, versions)")
    return 0


# =============================================================================================
# snnbridge evaluate
# =============================================================================================


def _timestep_flags(args) -> None:
    """Resolve evaluate's T flags: ``--timesteps`` is the conversion T, ``--report-timesteps`` the reported list.

    The old spellings (``--convert-timesteps T``, ``--timesteps 1,2,8`` as the list) work for one
    release, with a warning naming the new flag.
    """
    if args.old_convert_timesteps is not None:
        if args.conv_timesteps is not None:
            raise CliError("give --timesteps T only; --convert-timesteps is its old name.")
        _warn(f"--convert-timesteps is deprecated and goes away in the next release: write --timesteps "
              f"{args.old_convert_timesteps} (the conversion T, as in `snnbridge convert`).")
        if args.snn:
            _warn("--convert-timesteps only applies when converting (--config); the saved SNN is used as it is.")
        else:
            args.conv_timesteps = args.old_convert_timesteps
    elif isinstance(args.conv_timesteps, _OldTimestepList):
        listed = ",".join(map(str, args.conv_timesteps))
        if args.report_timesteps:
            raise CliError(f"--timesteps {listed} and --report-timesteps both list T values to report; give "
                           "--report-timesteps only (--timesteps is the conversion T).")
        _warn(f"evaluate --timesteps {listed} (T values to report) is deprecated and goes away in the next release: "
              f"write --report-timesteps {listed}. --timesteps T is the conversion T, as in `snnbridge convert`.")
        args.report_timesteps, args.conv_timesteps = list(args.conv_timesteps), None
    elif args.conv_timesteps is not None:
        if args.snn:
            raise CliError(f"--timesteps {args.conv_timesteps} is the T an SNN is converted for, and --snn {args.snn} "
                           f"is converted already. To report the accuracy at given T values, write --report-timesteps "
                           f"{args.conv_timesteps}.")
        if not args.report_timesteps:
            _warn(f"--timesteps {args.conv_timesteps} is the conversion T (as in `snnbridge convert`); the T values "
                  "to report are --report-timesteps (default: 1, 2, 4 ... up to T).")


def _check_report(report: list[int], calibrated: list[tuple[str, int, str]], longest: int | None,
                  asked: str = "--report-timesteps asks for") -> None:
    """Refuse reported T values past what T-specific corrections were calibrated for, before any simulation.

    ``calibrated``: ``(plugin, T, on_mismatch)`` per T-specific plugin; ``longest``: the SNN's
    per-step tables' length (None: no table, or not converted yet).
    """
    from .errors import TimestepError
    from .evaluate import default_timesteps

    top = max(report)
    limits = [(t, f"{name} is T-specific, calibrated for T = {t}") for name, t, policy in calibrated
              if policy != "ignore"]
    if longest is not None:
        limits.append((longest, f"its per-step bias tables cover {longest} steps"))
    for allowed, why in sorted(limits):
        if top > allowed:
            raise TimestepError(f"{asked} T = {top}, but {why}: the largest T it can report is "
                                f"{allowed}. Report up to {allowed} (e.g. --report-timesteps "
                                f"{','.join(map(str, default_timesteps(allowed)))}), or convert with --timesteps "
                                f"{top} to report up to {top}.")


def _saved_snn(args, setup: _Setup):
    """A saved SNN (``--snn``) and, when ``--model`` is given, the ANN to compare it with.

    Returns ``(snn, info, ann or None, model record or None, SNN record)`` (evaluate and report).
    """
    from . import runrecord
    from .io import load

    if args.backend:
        _warn("--backend only applies when converting (--config); the saved SNN is used as it is.")
    snn, info = load(args.snn, with_info=True)
    meta = info.get("metadata") or {}
    ann = model_record = None
    if setup.model_spec:  # the ANN, for comparison
        _require_weights(args, setup)
        ann = _build_ann(args, setup)
        model_record = _model_record(args, setup)
    snn_record = {"path": str(args.snn), "sha256": runrecord.sha256_file(args.snn),
                  "saved_at": info.get("saved_at"), "conversion": meta.get("run")}
    return snn, info, ann, model_record, snn_record


def _measured_on(args, setup: _Setup, snn, ann, device, saved_norm: dict, classes, doing: str, whose: str):
    """The reported T values (checked against T-specific plugins), the SNN (and ANN) on ``device`` in
    eval mode, and the images to measure on: ``(timesteps, normalisation, data, indices)``."""
    from .corrections import TimestepCheck, longest_run
    from .data import open_image_folder
    from .evaluate import default_timesteps

    timesteps = list(args.report_timesteps or default_timesteps(snn.timesteps))
    _check_report(timesteps, [(c.plugin, c.timesteps, c.policy) for c in snn.timestep_checks
                              if isinstance(c, TimestepCheck)], longest_run(snn),
                  "--report-timesteps asks for" if args.report_timesteps else "the default report goes up to the SNN's")
    snn.to(device).eval()
    if ann is not None:
        ann.to(device).eval()
    assert setup.data_path  # both commands require --data before any work
    norm = _data_settings(args, setup.norm, saved_norm)
    data = open_image_folder(setup.data_path, args.split, **norm)
    if args.split and data.split != args.split:
        _warn(f"{setup.data_path} has no {args.split!r} folder; {doing} all its images.")
    if classes and list(classes) != data.classes:
        _warn(f"the {whose} classes ({', '.join(data.classes[:5])} ...) differ from the calibration classes "
              f"({', '.join(classes[:5])} ...); labels may not match the model's outputs.")
    return timesteps, norm, data, data.sample(args.samples, seed=args.seed)


def cmd_evaluate(args) -> int:
    from . import distributed, runrecord
    from .corrections import calibrated_timesteps
    from .evaluate import accuracy_curve

    started, started_at = time.perf_counter(), runrecord.now()
    if args.snn and args.config:
        raise CliError("give either --snn FILE (a converted SNN) or --config/--model (convert now), not both.")
    if not args.snn and not args.config:
        raise CliError("give --snn FILE (from `snnbridge convert`) or --config RECIPE --model MODULE:FACTORY.")
    _timestep_flags(args)
    device = _device(args.device)
    progress = _progress(args)
    setup = _Setup(args)
    if not setup.data_path:
        raise CliError("give --data PATH: the image folder or .tar.gz to evaluate on.")

    ann = None
    saved_norm: dict = {}
    classes = None
    model_record = None
    if args.snn:
        snn, info, ann, model_record, snn_record = _saved_snn(args, setup)
        meta = info.get("metadata") or {}
        saved_norm, classes = meta.get("data") or {}, meta.get("classes")
        source = str(args.snn)
        backend = {"name": snn.backend_name, "options": info.get("backend_options") or {}}
    else:
        def before_work(recipe):  # reject reported T values past a T-specific plugin's T before converting
            if args.report_timesteps:
                _check_report(args.report_timesteps, [(e.name, calibrated_timesteps(e.options, setup.timesteps),
                                                       e.options.get("on_mismatch", "warn"))
                                                      for e in recipe.entries if e.info.t_specific], None)

        snn, ann, meta = _convert(args, setup, device, progress, before_work=before_work)
        saved_norm = meta["data"]
        classes = meta["classes"]
        source = f"{setup.model_spec} converted with {setup.config_path}"
        snn_record = {"converted": meta["conversion"]}
        model_record = meta["conversion"]["model"]
        backend = meta["conversion"]["backend"]
    report, norm, data, indices = _measured_on(args, setup, snn, ann, device, saved_norm, classes,
                                               "evaluating on", "evaluation")
    try:
        per_rank = _per_rank_batch(args.batch_size, len(indices), "evaluation")
        batches = data.batches(indices, per_rank, workers=args.workers, pin_memory=device.type == "cuda",
                               shard=distributed.active())
        curve = accuracy_curve(snn, batches, report, ann=ann, device=device, progress=progress)
    except RuntimeError as exc:
        raise CliError(f"the model failed on the images of {data.where}: {_first_line(exc)}. Check --image-size, "
                       "--mean/--std and the data; --debug shows the traceback.") from exc
    results = [{"T": t, "steps_run": n, "accuracy": a}
               for t, n, a in zip(curve["timesteps"], curve["steps_run"], curve["accuracy"])]
    from . import __version__

    summary = {
        "snn": source, "recipe": snn.recipe, "backend": snn.backend_name, "snn_timesteps": snn.timesteps,
        "warmup": snn.warmup, "lookahead": snn.lookahead, "presimulation": _presim_text(snn),
        "data": str(setup.data_path), "split": data.split, "samples": curve["samples"],
        "images_available": len(data), "seed": args.seed, "ann_accuracy": curve["ann_accuracy"], "results": results,
        "timesteps": curve["timesteps"], "steps_run": curve["steps_run"], "accuracy": curve["accuracy"],
        "ranks": curve["ranks"], "seconds": round(time.perf_counter() - started, 3), "snnbridge_version": __version__,
    }
    outputs = [p for p in (args.json, args.plot) if p and p != "-"]
    record_files = list(dict.fromkeys(str(runrecord.record_path(p)) for p in outputs))
    record = {
        **runrecord.header("evaluate", args.argv), "seed": args.seed, "snn": snn_record,
        "recipe": snn.recipe, "backend": backend, "timesteps": snn.timesteps, "model": model_record,
        "data": {"path": str(setup.data_path), "path_resolved": str(Path(setup.data_path).resolve()),
                 "split": data.split, "classes": data.classes, "normalisation": norm},
        "evaluation": {"split": data.split, "samples": len(indices), "images_available": len(data),
                       "seed": args.seed, "batch_size": args.batch_size, "report_timesteps": curve["timesteps"],
                       "indices": indices},
        "device": str(device), "distributed": _distributed_record(),
        "output": {"json": args.json, "plot": args.plot, "run_record": record_files},
        runrecord.TIMING_KEY: {"started_at": started_at, "finished_at": runrecord.now(),
                               "seconds": summary["seconds"]},
    }
    record = json.loads(json.dumps(record, default=str))
    if _rank() != 0:  # the results are the same on every rank: rank 0 prints and writes them
        return 0
    if args.json == "-":  # keep stdout pure JSON
        with contextlib.redirect_stdout(sys.stderr):
            _print_table(summary)
    else:
        _print_table(summary)
    if args.json:
        if args.json == "-":
            print(json.dumps({**summary, "run": record}, indent=2))
        else:
            _write(args.json, lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8"))
            _say(f"wrote {args.json}")
    if args.plot:
        _write(args.plot, lambda p: _plot(summary, p))
        _say(f"wrote {args.plot}")
    for path in record_files:
        _write(path, lambda p: runrecord.write(record, p))
        print(f"wrote {path} (run record)", file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    return 0


# =============================================================================================
# snnbridge report
# =============================================================================================


def cmd_report(args) -> int:
    from . import runrecord
    from .report import report, summary_lines

    started, started_at = time.perf_counter(), runrecord.now()
    if args.snn_flag:
        if args.snn and args.snn != args.snn_flag:
            raise CliError(f"two SNN files: {args.snn} and --snn {args.snn_flag}; give one.")
        args.snn = args.snn_flag
    if args.snn and args.config:
        raise CliError("give either SNN_FILE (a converted SNN) or --config/--model (convert now), not both.")
    if not args.snn and not args.config:
        raise CliError("give SNN_FILE (from `snnbridge convert`) or --config RECIPE --model MODULE:FACTORY.")
    if args.snn and args.conv_timesteps is not None:
        raise CliError(f"--timesteps {args.conv_timesteps} is the T an SNN is converted for, and {args.snn} is "
                       "converted already. To report the accuracy at given T values, write --report-timesteps "
                       f"{args.conv_timesteps}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out!r} is a file; give a folder (report.json, report.html and the plots go "
                       "there).")
    if args.energy.lower() != "none":
        from .energy import resolve_costs

        resolve_costs(args.energy)  # an unknown preset: an error before any work
    device = _device(args.device)
    progress = _progress(args)
    setup = _Setup(args)
    if not setup.data_path:
        raise CliError("give --data PATH: the image folder or .tar.gz to report on.")
    ann = None
    model_record: dict | None = None
    if args.snn:
        snn, info, ann, model_record, snn_record = _saved_snn(args, setup)
        meta = info.get("metadata") or {}
        saved_norm, classes = meta.get("data") or {}, meta.get("classes")
        if ann is None:
            _warn("no ANN given (--model MODULE:FACTORY with --checkpoint FILE): the report shows the SNN's "
                  "thresholds, firing rates, silent neurons, accuracy and SynOps, but not its errors against the ANN, "
                  "offset spikes or error shares.")
        source = str(args.snn)
    else:
        snn, ann, meta = _convert(args, setup, device, progress)
        saved_norm, classes = meta["data"], meta["classes"]
        source = f"{setup.model_spec} converted with {setup.config_path}"
        snn_record = {"converted": meta["conversion"]}
        model_record = meta["conversion"]["model"]
    steps, norm, data, indices = _measured_on(args, setup, snn, ann, device, saved_norm, classes,
                                              "reporting on", "report's")
    split = f"/{data.split}" if data.split else ""
    about = {"SNN": source, "data": f"{len(indices)} of {len(data)} images from {setup.data_path}{split}"
             + (f" (random sample, seed {args.seed})" if len(indices) < len(data) else "")}
    try:
        batches = data.batches(indices, args.batch_size, workers=args.workers, pin_memory=device.type == "cuda")
        rep = report(ann, snn, batches, timesteps=steps, out=out, progress=progress, about=about,
                     costs=None if args.energy.lower() == "none" else args.energy)
    except RuntimeError as exc:
        raise CliError(f"the model failed on the images of {data.where}: {_first_line(exc)}. Check --image-size, "
                       "--mean/--std and the data; --debug shows the traceback.") from exc
    _say(f"SNN:         {source}")
    _say(f"             recipe {_recipe_text(snn.recipe)}; backend {snn.backend_name}; converted for T = "
         f"{snn.timesteps}; measured at T = {rep['measured_at']}")
    _say(f"data:        {about['data']}")
    for line in summary_lines(rep):
        _say(line)
    record_file = out / "report.run.json"
    record = {
        **runrecord.header("report", args.argv), "seed": args.seed, "snn": snn_record, "recipe": snn.recipe,
        "timesteps": snn.timesteps, "model": model_record,
        "data": {"path": str(setup.data_path), "path_resolved": str(Path(setup.data_path).resolve()),
                 "split": data.split, "classes": data.classes, "normalisation": norm},
        "evaluation": {"split": data.split, "samples": len(indices), "images_available": len(data),
                       "seed": args.seed, "batch_size": args.batch_size, "report_timesteps": steps,
                       "indices": indices},
        "device": str(device), "output": {**rep["files"], "run_record": str(record_file)},
        runrecord.TIMING_KEY: {"started_at": started_at, "finished_at": runrecord.now(),
                               "seconds": round(time.perf_counter() - started, 3)},
    }
    _write(str(record_file), lambda p: runrecord.write(json.loads(json.dumps(record, default=str)), p))
    _say(f"\nwrote {rep['files']['html']} (open it in a browser), {rep['files']['json']}, the plots and "
         f"{record_file.name}")
    return 0


def _write(path: str, writer) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer(path)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}.") from exc


def _print_table(s: dict) -> None:
    split = f"/{s['split']}" if s["split"] else ""
    _say(f"SNN:   {s['snn']}")
    _say(f"       recipe {_recipe_text(s['recipe'])}; backend {s['backend']}; converted for T = {s['snn_timesteps']}"
         + (f"; {s['presimulation']}" if s["presimulation"] else ""))
    _say(f"data:  {s['samples']} of {s['images_available']} images from {s['data']}{split}"
         + (f" (random sample, seed {s['seed']})" if s["samples"] < s["images_available"] else ""))
    if s["ann_accuracy"] is not None:
        _say(f"ANN accuracy: {100 * s['ann_accuracy']:.2f} %")
    _say("")
    gap = s["ann_accuracy"] is not None
    _say(f"{'T':>6}  {'steps run':>9}  {'SNN accuracy':>12}" + ("  vs ANN" if gap else ""))
    for r in s["results"]:
        line = f"{r['T']:>6}  {r['steps_run']:>9}  {100 * r['accuracy']:>10.2f} %"
        if gap:
            line += f"  {100 * (r['accuracy'] - s['ann_accuracy']):+6.2f}"
        _say(line)
    _say(f"\n({s['seconds']:.1f} s; one simulation of {max(s['steps_run'])} steps per batch)")


def _plot(s: dict, path: str) -> None:
    from .plots import plot_accuracy

    xlabel = "counted time steps T" + (f" ({s['presimulation']})" if s["presimulation"] else "")
    plot_accuracy([{"label": f"SNN ({s['backend']})", "timesteps": s["timesteps"], "accuracy": s["accuracy"]}],
                  path, ann_accuracy=s["ann_accuracy"], xlabel=xlabel, title=_plot_title(s))


def _plot_title(s: dict) -> str:
    """What a reader of the evaluate plot needs: the recipe (non-default options only), backend, T, the images."""
    from .plots import run_title

    return run_title(s["recipe"], s["backend"], s["snn_timesteps"]) + f"; {s['samples']} {s['split'] or 'all'} images"


# =============================================================================================
# snnbridge tune
# =============================================================================================


def _candidate_file(path: str) -> list:
    """The recipes of a ``--candidates`` file: ``candidates: [recipe, ...]`` (or a bare list) in YAML or TOML."""
    import tomllib

    import yaml

    file = Path(path)
    example = "candidates:\n  - [maxnorm]\n  - [robustnorm, opi]"
    if not file.is_file():
        raise CliError(f"--candidates {path!r} does not exist; give a .yaml or .toml file like\n{example}")
    try:
        text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text) if file.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise CliError(f"--candidates {path}: cannot read it ({_first_line(exc)}); write it like\n{example}") from exc
    if isinstance(data, dict) and set(data) == {"candidates"}:
        data = data["candidates"]
    if not isinstance(data, list) or not data:
        raise CliError(f"--candidates {path}: expected a non-empty list of recipes under 'candidates:', like\n"
                       f"{example}")
    return data


def _best_config(result, t: int, args, setup: _Setup, norm: dict) -> dict[str, Any]:
    """A config file for ``snnbridge convert --config``: the winner at ``t`` with the model, weights and data."""
    row = result.best_row(t)
    data: dict[str, Any] = {"path": str(Path(str(setup.data_path)).resolve())}
    data.update({k: v for k, v in norm.items() if v is not None})
    cfg: dict[str, Any] = {
        "description": f"chosen by `snnbridge tune` for T = {t}: {result.score} {100 * row['score']:.2f} % on "
                       f"{result.holdout['samples']} held-out calibration images",
        "recipe": result.best[t], "backend": {"name": setup.backend, **setup.backend_options}, "timesteps": t,
        "model": _architecture_ref(str(setup.model_spec)), "data": data, "seed": args.seed}
    if setup.checkpoint:
        cfg["checkpoint"] = str(Path(setup.checkpoint).resolve())
    if setup.disable:
        cfg["disable"] = list(setup.disable)
    return cfg


def cmd_tune(args) -> int:
    import yaml

    from . import runrecord
    from .data import open_image_folder
    from .distributed import launched_by_torchrun
    from .tune import tune

    started, started_at = time.perf_counter(), runrecord.now()
    if launched_by_torchrun():
        raise CliError("`snnbridge tune` runs in one process; start it without torchrun, then convert the chosen "
                       "recipe (tune's best-T<T>.yaml) under torchrun if you like.")
    setup = _Setup(args)
    if not setup.model_spec:
        raise CliError("give --model MODULE:FACTORY (or 'model:' in the config) to say how to build the ANN.")
    _require_weights(args, setup)
    if not setup.data_path:
        raise CliError("give --data PATH: the image folder or .tar.gz whose train split calibrates and scores the "
                       "candidates.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out!r} is a file; give a folder (tune.json, tune.png and best-T<T>.yaml go "
                       "there).")
    candidates = _candidate_file(args.candidates) if args.candidates else None
    device = _device(args.device)
    ann = _build_ann(args, setup).to(device)
    norm = _data_settings(args, setup.norm)
    data = open_image_folder(setup.data_path, args.calib_split, **norm)
    indices = data.sample(args.calib_samples, seed=args.seed)
    batches = [(x.to(device), y) for x, y in data.batches(indices, args.batch_size, workers=args.workers)]
    if len(batches) <= args.holdout_batches:
        raise CliError(f"{len(indices)} calibration images in batches of {args.batch_size} make {len(batches)} "
                       f"batch(es), but --holdout-batches {args.holdout_batches} needs at least one more to calibrate "
                       "on: draw more images (--calib-samples) or give a smaller --batch-size.")
    try:
        result = tune(ann, batches, timesteps=args.tune_timesteps, candidates=candidates,
                      include=[setup.cfg.recipe] if setup.cfg else None, holdout_batches=args.holdout_batches,
                      score=args.score, budget_s=args.budget, backend=setup.backend,
                      backend_options=setup.backend_options, seed=args.seed, progress=_progress(args),
                      max_stack=args.max_stack, convert_per_t=args.convert_per_t, disable=setup.disable)
    except RuntimeError as exc:
        raise CliError(f"the model failed on the images of {data.where}: {_first_line(exc)}. Check --image-size, "
                       "--mean/--std and the data; --debug shows the traceback.") from exc
    _say(result.table())
    _say("")
    files = {"json": str(out / "tune.json"), "plot": str(out / "tune.png"), "run_record": str(out / "tune.run.json")}
    for t in result.best:
        path = out / f"best-T{t}.yaml"
        cfg = _best_config(result, t, args, setup, norm)
        _write(str(path), lambda p, cfg=cfg: Path(p).write_text(yaml.safe_dump(cfg, sort_keys=False)))
        files[f"best_T{t}"] = str(path)
        _say(f"best for T = {t}: {result.best_row(t)['label']} -> {path}")
    _write(files["json"], result.save_json)
    _write(files["plot"], result.plot)
    record = {**runrecord.header("tune", args.argv), "seed": args.seed, "model": _model_record(args, setup),
              "data": {"path": str(setup.data_path), "path_resolved": str(Path(setup.data_path).resolve()),
                       "split": data.split, "classes": data.classes, "normalisation": norm},
              "calibration": {"samples": len(indices), "images_available": len(data), "batch_size": args.batch_size,
                              "holdout_batches": args.holdout_batches, "indices": indices},
              "backend": {"name": setup.backend, "options": dict(setup.backend_options)},
              "config": setup.config_path, "candidates_file": args.candidates, "device": str(device),
              "output": files,
              runrecord.TIMING_KEY: {"started_at": started_at, "finished_at": runrecord.now(),
                                     "seconds": round(time.perf_counter() - started, 3)}}
    _write(files["run_record"], lambda p: runrecord.write(json.loads(json.dumps(record, default=str)), p))
    _say(f"wrote {files['json']}, {files['plot']} and {files['run_record']}; convert a winner with "
         f"`snnbridge convert --config {out / f'best-T{max(result.best)}.yaml'} --out snn.pt`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
