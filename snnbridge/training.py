"""``snnbridge.training_loss``: the loss for training or fine-tuning an SNN, composed from a recipe.

A loss recipe holds training plugins: at most one *base loss* (capability ``training_loss``,
e.g. ``tet``) and any number of *terms* added to it (capability ``loss_term``, e.g. ``gsr``).
Without a base loss the base is cross-entropy on the time-mean of the outputs (standard
direct training), so ``training_loss([])`` is that loss. The core builds the base first and
then hands it to every term plugin in recipe order (``snnbridge_training_loss(options,
base)``), wherever the base plugin stands: ``["gsr", "tet"]`` and ``["tet", "gsr"]`` are
the same loss. ::

    criterion = snnbridge.training_loss(["tet", {"gsr": {"lam": 0.01}}])
    x.requires_grad_(True)                   # gsr differentiates the outputs w.r.t. the inputs
    loss = criterion(snn.steps(x), y, model=snn, inputs=x)

Recipes take the forms of conversion recipes (names, ``{name: options}``, plugin objects) and
are validated completely before any work: unknown plugins and options, conversion methods and
backends (they belong to :func:`snnbridge.convert`), two base losses. A training plugin that
gives no loss (a surrogate gradient) is accepted and skipped - listed in
:attr:`TrainingLoss.skipped` - so one training recipe can serve the loss and the surrogate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InputError, PluginConflictError, PluginError, RecipeParseError
from .options import resolve_options
from .plugin_manager import Registry, plugin_object_name
from .recipe import Recipe, RecipeEntry, _check_capabilities, entries_and_registry

HOOK = "snnbridge_training_loss"
BASE, TERM = "training_loss", "loss_term"


class MeanCrossEntropy:
    """Cross-entropy of the time-mean output, ``CE(mean_t O(t), y)``: the base loss when no plugin provides one.

    Takes per-step ``[T, B, K]`` or decoded ``[B, K]`` outputs (a mean is already decoded).
    """

    label = "cross_entropy(time-mean)"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, *, model: Any = None,
                 inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The loss value (``model`` and ``inputs`` are not used)."""
        return F.cross_entropy(outputs.mean(0) if outputs.dim() == 3 else outputs, targets)


class TrainingLoss:
    """A training loss built by :func:`training_loss`: call it as ``loss(outputs, targets, *, model, inputs)``.

    ``outputs``: per-step ``[T, B, K]`` logits (``snn.steps(x)``; time first) or decoded
    ``[B, K]`` ones (``snn(x)``); ``targets``: class indices ``[B]``. ``model`` and ``inputs``
    (the tensor the outputs were computed from) are needed by terms that run the model again
    or differentiate w.r.t. the input (``gsr``). The core checks the shapes before any plugin
    runs; the result is a scalar tensor to call ``backward()`` on.

    Attributes: ``recipe`` (the validated :class:`~snnbridge.recipe.Recipe`, every plugin with
    its complete options), ``skipped`` (training plugins of the recipe that give no loss, e.g.
    a surrogate) and ``loss`` (the composed callable, without the core's checks).
    """

    def __init__(self, loss: Callable[..., Any], recipe: Recipe, labels: Sequence[str], skipped: Sequence[str]):
        self.loss = loss
        self.recipe = recipe
        self.skipped = tuple(skipped)
        self._labels = list(labels)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, *, model: Any = None,
                 inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The loss value for one batch (a 0-dim tensor)."""
        check_outputs(outputs, targets)
        value = self.loss(outputs, targets, model=model, inputs=inputs)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            what = f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise PluginError(f"the training loss {self!r} returned {what}; a loss must return a scalar tensor (reduce "
                              "it with .mean()). This is a bug of the loss plugin.")
        return value

    def __repr__(self) -> str:
        skipped = f", skipped={list(self.skipped)}" if self.skipped else ""
        return f"TrainingLoss({' + '.join(self._labels)}{skipped})"


def training_loss(recipe: Any, *, registry: Registry | None = None) -> TrainingLoss:
    """Build the training loss of a recipe of training plugins (see the module docstring).

    ``[]`` gives cross-entropy on the time-mean; ``["tet"]`` TET; ``["tet", {"gsr": {"lam":
    0.01}}]`` TET plus the gradient-sparsity term. Every error (unknown plugin or option, a
    conversion method, two base losses) is raised here, before any training step.
    """
    rec = training_recipe(recipe, registry=registry)
    registry = rec.registry
    base_entries = [e for e in rec.entries if _role(e, registry) == BASE]
    terms = [e for e in rec.entries if _role(e, registry) == TERM]
    skipped = [e.name for e in rec.entries if _role(e, registry) is None]
    if base_entries:
        loss = _build(base_entries[0], registry, None)
        labels = [_label(base_entries[0])]
    else:
        loss, labels = MeanCrossEntropy(), [MeanCrossEntropy.label]
    for e in terms:  # each term wraps the loss built so far, in recipe order
        loss = _build(e, registry, loss)
        labels.append(_label(e))
    return TrainingLoss(loss, rec, labels, skipped)


def training_recipe(recipe: Any, *, registry: Registry | None = None) -> Recipe:
    """Parse and validate a recipe of training plugins; raises before any work (see :func:`training_loss`)."""
    entries, registry = entries_and_registry(recipe, registry)
    built: list[RecipeEntry] = []
    for entry, given in entries:
        name = entry if isinstance(entry, str) else plugin_object_name(entry)
        if not isinstance(name, str):
            raise RecipeParseError(f"training recipe entries must be plugin names, {{name: options}} mappings or "
                                   f"plugin objects; got {entry!r}.")
        name = registry.require(name, kind="training")
        info = registry.info(name)
        _check_kind(name, info.kind, registry)
        if any(e.name == name for e in built):
            raise PluginConflictError(f"plugin {name!r} appears twice in the training recipe; list it once with the "
                                      "options you want.")
        built.append(RecipeEntry(name, resolve_options(name, registry.options(name), given), info))
    check_training_entries(built, registry)
    validated = Recipe(built, registry)
    for e in built:  # option-dependent rules of each plugin
        registry.call(e.name, "snnbridge_check_recipe", default=None, recipe=validated, options=e.options)
    return validated


def check_training_entries(entries: Sequence[RecipeEntry], registry: Registry) -> None:
    """The rules of a training recipe that do not depend on options: kinds, loss roles, capabilities."""
    for e in entries:
        _check_kind(e.name, e.info.kind, registry)
        _role(e, registry)  # raises for a plugin whose capabilities and hooks disagree
    bases = [e.name for e in entries if _role(e, registry) == BASE]
    if len(bases) > 1:
        raise PluginConflictError(
            f"plugins {bases[0]!r} and {bases[1]!r} are both base losses ({BASE!r}), and a training recipe has at "
            f"most one (the others add terms to it: 'loss_term'). Keep one of {bases[0]!r} and {bases[1]!r}.")
    _check_capabilities(list(entries), registry, for_conversion=False)


def check_outputs(outputs: Any, targets: Any) -> None:
    """Refuse outputs and targets a loss cannot read, naming the fix (called before any loss plugin)."""
    if not isinstance(outputs, torch.Tensor):
        raise InputError(f"the loss takes the model's outputs as a torch.Tensor, got {type(outputs).__name__}.")
    if not outputs.is_floating_point():
        raise InputError(f"outputs must be floating-point logits, got dtype {outputs.dtype}; use outputs.float().")
    if outputs.dim() not in (2, 3):
        raise InputError(f"outputs must be per-step logits [T, B, K] (snn.steps(x)) or decoded ones [B, K] (snn(x)), "
                         f"got shape {list(outputs.shape)}; flatten any extra dimensions into K.")
    if not isinstance(targets, torch.Tensor):
        raise InputError(f"targets must be a tensor of class indices [B], got {type(targets).__name__}; use "
                         "torch.as_tensor(targets).")
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
        hint = " (one-hot or probabilities: use targets.argmax(1))" if targets.dim() == 2 else ""
        raise InputError(f"targets must be integer class indices [B], got dtype {targets.dtype}{hint}; use "
                         "targets.long().")
    if targets.dim() != 1:
        raise InputError(f"targets must be class indices of shape [B], got shape {list(targets.shape)}; for one-hot "
                         "targets use targets.argmax(1).")
    batch, classes = outputs.shape[-2], outputs.shape[-1]
    if targets.shape[0] != batch:
        if outputs.dim() == 3 and outputs.shape[0] == targets.shape[0]:
            raise InputError(f"outputs of shape {list(outputs.shape)} look batch-first [B, T, K]; snnbridge losses "
                             "take time first [T, B, K]: pass outputs.transpose(0, 1).")
        raise InputError(f"targets hold {targets.shape[0]} labels but the outputs {list(outputs.shape)} hold {batch} "
                         "samples; pass the labels of the same batch.")
    if targets.device != outputs.device:
        raise InputError(f"targets are on {targets.device} but the outputs on {outputs.device}; use "
                         "targets.to(outputs.device).")
    if targets.numel():
        low, high = torch.stack(torch.aminmax(targets)).tolist()  # one sync; on CUDA a bad label is a device assert
        if low < 0 or high >= classes:
            raise InputError(f"targets must be class indices in 0..{classes - 1} (the outputs have K = {classes} "
                             f"classes), got values from {low} to {high}.")


# -- helpers -------------------------------------------------------------------------------------------------


def _check_kind(name: str, kind: str, registry: Registry) -> None:
    training = ", ".join(registry.names("training")) or "none installed"
    if kind == "backend":
        raise PluginConflictError(f"{name!r} is a neuron backend, not a training plugin: pass backend={name!r} to "
                                  f"snnbridge.convert. Training plugins: {training}.")
    if kind != "training":
        raise PluginConflictError(f"{name!r} is a conversion method, not a training plugin: it belongs in the recipe "
                                  f"of snnbridge.convert (or snnbridge.prepare), not in a training loss. Training "
                                  f"plugins: {training}.")


def _role(e: RecipeEntry, registry: Registry) -> str | None:
    """``"training_loss"`` (base loss), ``"loss_term"`` or None (a training plugin that gives no loss)."""
    implements = registry.implements(e.name, HOOK)
    declared = [c for c in (BASE, TERM) if c in e.info.provides]
    if len(declared) == 2:
        raise PluginError(f"plugin {e.name!r} provides both {BASE!r} (a base loss) and {TERM!r} (a term added to the "
                          "base); its author must declare one of them in PluginInfo.provides.")
    if implements and not declared:
        raise PluginError(f"plugin {e.name!r} implements {HOOK} but provides neither {BASE!r} (a base loss) nor "
                          f"{TERM!r} (a term added to the base loss); its author must declare one in "
                          "PluginInfo.provides.")
    if declared and not implements:
        raise PluginError(f"plugin {e.name!r} provides {declared[0]!r} but does not implement {HOOK}; its author must "
                          "implement the hook (see snnbridge.hookspecs).")
    return declared[0] if declared else None


def _build(e: RecipeEntry, registry: Registry, base: Callable[..., Any] | None) -> Callable[..., Any]:
    loss = registry.call(e.name, HOOK, options=dict(e.options), base=base)
    if not callable(loss):
        raise PluginError(f"plugin {e.name!r}: {HOOK} must return a loss callable loss(outputs, targets, *, "
                          f"model=None, inputs=None), got {type(loss).__name__}.")
    return loss


def _label(e: RecipeEntry) -> str:
    return f"{e.name}({', '.join(f'{k}={v!r}' for k, v in e.options.items())})"
