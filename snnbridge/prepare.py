"""``snnbridge.prepare``: swap activations for a method's training-time activation.

Conversion-aware methods (QCFS, Deng & Gu's threshold ReLU, ...) train the ANN with a
special activation. ``prepare(model, recipe)`` traces a copy of the model, finds every
activation call (one per *call site*, so a ``nn.ReLU`` used twice gets two independent
replacements, each with its own trainable parameters) and asks the recipe's
``snnbridge_replace_activation`` providers for the replacement. Nothing else changes:
BatchNorm and Dropout stay, the training flag is kept, the user's model is not touched.

The result is a ``torch.fx.GraphModule``; its parameter names are deterministic, so a
checkpoint round-trips: ``prepare -> train -> save state_dict``, then later
``prepare(fresh model) -> load_state_dict -> snnbridge.convert``.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

from .errors import MissingRequirementError, PluginError, UnsupportedModelError
from .graph import Tracer, activation_of, unique_site_name
from .recipe import build_recipe
from .sites import SiteInfo

_DEFAULT_MODULES = {"relu": lambda clip: nn.ReLU(), "relu6": lambda clip: nn.ReLU6(),
                    "clip": lambda clip: nn.Hardtanh(0.0, clip)}


def prepare(model: nn.Module, recipe: Any) -> fx.GraphModule:
    """Return a copy of ``model`` whose activations are replaced by the recipe's training activations."""
    rec = build_recipe(recipe, for_conversion=False)
    registry = rec.registry
    providers = [e for e in rec.entries if registry.implements(e.name, "snnbridge_replace_activation")]
    if not providers:
        raise MissingRequirementError(
            f"no plugin of the recipe {rec.names} replaces activations, so prepare() would change nothing. Use a "
            "training-activation plugin, e.g. snnbridge.prepare(model, ['qcfs']); list them with `snnbridge plugins`.")
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"prepare takes a torch.nn.Module, got {type(model).__name__}.")
    work = copy.deepcopy(model)
    claim = registry.claim_module
    try:
        graph = Tracer(claim).trace(work)
    except Exception as exc:
        raise UnsupportedModelError(f"torch.fx could not trace the model: {type(exc).__name__}: {exc}. Remove "
                                    "data-dependent Python control flow from forward.") from exc
    gm = fx.GraphModule(work, graph, class_name=type(model).__name__ + "Prepared")
    names: set[str] = set()
    replaced = 0
    for node in list(gm.graph.nodes):
        found = activation_of(node, gm, claim)
        if found is None:
            continue
        kind, clip_max, module, claimed = found
        if claimed is not None:
            continue  # already a method's activation (e.g. preparing a prepared model)
        name, origin = unique_site_name(node, names)
        names.add(name)
        info = SiteInfo(name=name, kind=kind, clip_max=clip_max, source=origin)
        current = gm.get_submodule(node.target) if node.op == "call_module" else _DEFAULT_MODULES[kind](clip_max)
        new = None
        for entry in providers:
            new = registry.call(entry.name, "snnbridge_replace_activation", site=info, module=current,
                                options=entry.options)
            if new is not None:
                break
        if new is None:
            continue
        if not isinstance(new, nn.Module):
            raise PluginError(f"plugin {entry.name!r}: snnbridge_replace_activation must return an nn.Module or "
                              f"None, got {type(new).__name__}.")
        target = f"act_{name}"
        gm.add_submodule(target, new)
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(target, (node.args[0],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        replaced += 1
    if replaced == 0:
        raise UnsupportedModelError("prepare found no ReLU-like activation to replace in the model.")
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.train(model.training)
    return gm
