"""``snnbridge.convert``: the conversion pipeline, stage by stage, in recipe order.

    recipe validation (before any work)  ->  trace a copy, fold BN, find sites
    -> thresholds (the recipe's threshold provider)  ->  NeuronSpec per site
    -> configure_neuron (every recipe plugin, in order)  ->  neurons (the backend adapter)
    -> correct_error (every recipe plugin, in order)  ->  SpikingModel

The core owns the order and the data between stages; plugins own what happens inside.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from . import distributed
from .context import DEFAULT_BATCH_SIZE, ConversionContext, given_as_samples
from .corrections import TimestepCheck
from .errors import CalibrationError, InputError, MissingRequirementError, PluginError
from .factory import make_neuron_factory
from .folding import fold_in_place
from .graph import trace_for_conversion
from .recipe import Recipe, build_recipe
from .runtime import SpikingModel
from .spec import NeuronSpec


def check_timesteps(timesteps: Any) -> int:
    """``timesteps`` as a positive int, or an :class:`~snnbridge.errors.InputError` naming the fix."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise InputError(f"timesteps must be a positive whole number (e.g. 32), got {timesteps!r}.")
    return timesteps


def _infer_shapes_from_calibration(ctx: ConversionContext, first: torch.Tensor, calibration: Any) -> None:
    """Learn the shapes from the first calibration batch; a batch the model cannot take is a CalibrationError."""
    try:
        ctx.infer_shapes(first)
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        how = ("a calibration tensor holds samples along its first dimension and is split into batches of "
               "calibration_batch_size; " if isinstance(calibration, torch.Tensor) else "")
        raise CalibrationError(
            f"the model fails on the first calibration batch, shaped {list(first.shape)} ({text}). Calibration "
            f"batches must be shaped like the model's input with a batch dimension first, e.g. [B, C, H, W]; {how}"
            "check the data's layout (channels, image size, flattening).") from exc


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def convert(model: nn.Module, recipe: Any, *, calibration: Iterable | None = None, backend: str = "torch",
            timesteps: int = 32, backend_options: dict | None = None, calibration_batches: int | None = None,
            example_input: torch.Tensor | None = None, progress: bool = True, seed: int = 0,
            calibration_batch_size: int | None = None, fold_scales: bool = False) -> SpikingModel:
    """Convert a trained ANN into an SNN of real neurons.

    Args:
        model: any ``torch.nn.Module`` (never modified; conversion works on a copy).
        recipe: ordered method plugins, e.g. ``["maxnorm"]`` or
            ``[{"robustnorm": {"percentile": 99.99, "channelwise": True}}]`` (or plugin objects,
            or a :class:`~snnbridge.recipe.Recipe`).
        calibration: for plugins that need data: a DataLoader or iterable of batches (tensors,
            ``(input, target)`` tuples or dicts; a list of tensors is a list of batches), or the
            samples themselves: a tensor ``[N, ...]``, an ``(inputs, targets)`` tuple of two
            tensors or a Dataset (e.g. ``TensorDataset``), read in batches of
            ``calibration_batch_size`` samples (so that plugins counting batches, e.g. ``ftbc``'s
            ``batches``, see the same batches as from a DataLoader).
        backend: ``"torch"`` (reference), ``"spikingjelly"`` or ``"snntorch"`` (or any installed adapter).
        timesteps: T, the number of counted simulation steps.
        backend_options: options of the backend adapter (see ``snnbridge plugins``).
        calibration_batches: use at most this many calibration batches.
        example_input: a batch used to learn shapes when no calibration data is given.
        progress: show progress bars for steps that take more than about a second
            (``TQDM_DISABLE=1`` also turns them off).
        seed: seed for any sampling done during conversion.
        calibration_batch_size: batch size when ``calibration`` is given as samples (a tensor,
            an ``(inputs, targets)`` pair or a Dataset; default 128). Refused for data that is
            batched already (a DataLoader's batch size is its own).
        fold_scales: after all corrections, fold every threshold into the surrounding weights so that
            every neuron has threshold 1 and emits 0/1 spikes (same output up to float rounding;
            :func:`snnbridge.fold_scales`). What cannot be folded raises an
            :class:`~snnbridge.errors.InputError` naming the site and why.

    Returns:
        a :class:`~snnbridge.runtime.SpikingModel`; ``snn(x)`` returns the decoded output and
        ``snn.sweep(x)`` the output after each of 1..T steps.

    Distributed (a ``torch.distributed`` process group of several ranks is initialised): every
    rank calls ``convert`` with its own shard of the calibration data (a DataLoader over a
    ``DistributedSampler``) and the same other arguments. Statistics are reduced across the
    ranks (batch i is the union of the ranks' batches i; see :mod:`snnbridge.distributed`), every
    rank returns the same SNN, checked at the end by comparing a checksum of its weights, specs
    and corrections (``snn.report["distributed"]``), and only rank 0 draws progress bars.
    """
    started = time.perf_counter()
    timesteps = check_timesteps(timesteps)
    if not isinstance(fold_scales, bool):
        raise InputError(f"fold_scales must be True or False, got {fold_scales!r}.")
    if calibration_batches is not None and (isinstance(calibration_batches, bool) or
                                            not isinstance(calibration_batches, int) or calibration_batches < 1):
        raise InputError(f"calibration_batches must be a positive whole number (or None for all batches), got "
                         f"{calibration_batches!r}.")
    rec: Recipe = recipe if isinstance(recipe, Recipe) else build_recipe(recipe)
    registry = rec.registry
    factory = make_neuron_factory(backend, backend_options, registry)
    reason = rec.data_reason()
    if reason and calibration is None:
        raise MissingRequirementError(
            f"{reason}; pass calibration=<a DataLoader or list of batches> (a few hundred training images drawn at "
            "random are usually enough).")
    if not isinstance(model, nn.Module):
        raise InputError(f"snnbridge.convert takes a torch.nn.Module, got {type(model).__name__}.")
    if calibration_batch_size is not None and calibration is not None and not given_as_samples(calibration):
        raise CalibrationError(f"calibration_batch_size={calibration_batch_size!r} applies to calibration data given "
                               "as samples (a tensor, an (inputs, targets) pair or a Dataset); this "
                               f"{type(calibration).__name__} is batched already. Drop calibration_batch_size, or set "
                               "the DataLoader's batch_size.")

    graph = trace_for_conversion(model, claim=registry.claim_module)
    ctx = ConversionContext(graph, timesteps=timesteps, calibration=calibration, max_batches=calibration_batches,
                            device=_model_device(model), progress=progress, recipe=rec, backend=factory.backend,
                            seed=seed,
                            batch_size=DEFAULT_BATCH_SIZE if calibration_batch_size is None else calibration_batch_size)
    if example_input is not None:
        ctx.infer_shapes(example_input.to(ctx.device))
    elif calibration is not None:
        for first in ctx.batches(desc="shapes", limit=1):  # a loop, so the generator (and its bar) closes
            _infer_shapes_from_calibration(ctx, first, calibration)
    if not graph.sites:
        raise InputError("the model has no activation (ReLU-like) to convert into neurons; nothing would spike. "
                         "snnbridge converts networks with nn.ReLU / F.relu / ReLU6 / clip activations.")

    # thresholds: the recipe's active provider (validated to exist)
    provider = rec.active_provider("threshold")
    assert provider is not None  # guaranteed by recipe validation
    thresholds = registry.call(provider.name, "snnbridge_estimate_threshold", ctx=ctx, options=provider.options)
    if not isinstance(thresholds, dict) or set(thresholds) != set(graph.sites):
        given = set(thresholds) if isinstance(thresholds, dict) else set()
        missing = sorted(set(graph.sites) - given)
        raise PluginError(f"plugin {provider.name!r} returned thresholds for the wrong sites (missing: "
                          f"{', '.join(missing) or 'none'}); a threshold estimator must return a dict with one "
                          "threshold per site.")
    specs = {}
    for name, th in thresholds.items():
        try:
            specs[name] = NeuronSpec(threshold=th)
        except InputError as exc:
            raise InputError(f"plugin {provider.name!r} gave site {name!r} an invalid threshold: {exc}") from exc

    for entry in rec.entries:
        for name, info in graph.sites.items():
            new = registry.call(entry.name, "snnbridge_configure_neuron", default=None, site=info, spec=specs[name],
                                ctx=ctx, options=entry.options)
            if new is not None:
                if not isinstance(new, NeuronSpec):
                    raise PluginError(f"plugin {entry.name!r}: snnbridge_configure_neuron must return a NeuronSpec "
                                      f"or None, got {type(new).__name__}.")
                specs[name] = new

    report = {"recipe": rec.to_list(), "backend": factory.backend, "timesteps": timesteps,
              "model_class": f"{type(model).__module__}.{type(model).__qualname__}", "graph": graph.report,
              "sites": {n: {"kind": i.kind, "shape": list(i.shape) if i.shape else None, "pre_pool": i.pre_pool}
                        for n, i in graph.sites.items()}}
    snn = SpikingModel.build(graph, specs, factory, timesteps=timesteps, input_shape=ctx.input_shape,
                             recipe=rec.to_list(), report=report)
    snn.to(ctx.device)
    for entry in rec.entries:
        registry.call(entry.name, "snnbridge_correct_error", default=None, snn=snn, ctx=ctx, options=entry.options)
        if entry.info.t_specific and registry.implements(entry.name, "snnbridge_correct_error"):
            snn.timestep_checks.append(TimestepCheck(entry.name, ctx.timesteps_for(entry.options),
                                                     entry.options["on_mismatch"]))
    if fold_scales:
        fold_in_place(snn)
    if distributed.active():
        report["distributed"] = {"ranks": distributed.world_size(), "checksum": distributed.check_identical(snn)}
    report["specs"] = {n: s.describe() for n, s in snn.specs.items()}
    report["notes"] = ctx.report["notes"]
    report["steps_run"] = snn.steps_run
    report["conversion_seconds"] = round(time.perf_counter() - started, 3)
    snn.eval()
    return snn
