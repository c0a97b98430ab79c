"""Graph preparation: trace a *copy* of the ANN with torch.fx and make it conversion-ready.

What :func:`trace_for_conversion` does, in order (the user's model is never touched):

1. deep-copies the model, puts the copy in eval mode and traces it with torch.fx
   (modules that plugins claim as activations are kept as leaves);
2. rewrites every activation into an :class:`~snnbridge.sites.ActivationSite`: ``nn.ReLU``
   modules, ``F.relu``/``torch.relu``/``x.relu()`` calls (rewritten, not rejected),
   ``nn.ReLU6``/``F.relu6``, clip-style ``nn.Hardtanh(0, m)``/``torch.clamp(x, 0, m)``,
   and plugin-claimed modules; one site per *call*;
3. removes ``Dropout`` and ``Identity`` (eval mode);
4. folds every ``BatchNorm`` that directly follows a ``Conv``/``Linear`` (whose output has
   no other user) into that layer's weight and bias (running statistics, eval mode); other BNs stay as
   eval-mode affine layers, which is exact because they are linear;
5. max-pooling: a max-pool that directly follows an activation is moved *in front of* the
   neuron ("pre-neuron max pooling": exact for the ANN since ReLU and max commute; in the
   SNN it pools input currents). A max-pool anywhere else pools weighted spikes per step,
   which is lossy; it is kept and listed in the report;
6. checks every remaining node against the list of operations the runtime can run over a
   merged time-and-batch dimension, and raises :class:`UnsupportedModelError` listing
   *every* offending node with a suggested rewrite.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from .errors import UnsupportedModelError
from .sites import ActivationSite, SiteInfo

# ---------------------------------------------------------------------------------------------
# what is supported

STATELESS_MODULES: tuple[type, ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.Flatten, nn.Unflatten, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
)
DROPPED_MODULES: tuple[type, ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
           (nn.Linear, nn.BatchNorm1d))

LINEAR_FUNCTIONS = {
    operator.add, operator.sub, operator.neg, operator.pos, torch.add, torch.sub, torch.neg,
    torch.cat, torch.concat,
    torch.flatten, torch.reshape, F.linear, F.conv1d, F.conv2d, F.conv3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.pad, F.interpolate, F.batch_norm,
    torch.mean, torch.sum, torch.transpose, torch.permute, torch.unsqueeze, torch.squeeze, torch.chunk, torch.split,
    operator.getitem, getattr, operator.floordiv, operator.mod,
}
SCALAR_FUNCTIONS = {operator.mul, operator.truediv, torch.mul, torch.div}  # linear only with a non-tensor operand
DROPPED_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
SAFE_METHODS = {
    "view", "reshape", "flatten", "size", "dim", "contiguous", "mean", "sum", "permute", "transpose",
    "unsqueeze", "squeeze", "add", "sub", "neg", "chunk", "split", "view_as", "reshape_as", "expand_as", "float",
    "to", "type_as", "detach", "clone", "add_", "sub_", "unflatten",
}
SCALAR_METHODS = {"mul", "div", "mul_", "div_"}
DIM0_SENSITIVE = {"mean", "sum", "transpose", "permute", "unsqueeze", "squeeze", "chunk", "split", "cat", "concat"}

SUGGESTIONS = {
    "sigmoid": "sigmoid is not piecewise linear; retrain with ReLU, or keep it outside the converted model",
    "tanh": "tanh is not piecewise linear; retrain with ReLU or a clipped ReLU (nn.Hardtanh(0, m))",
    "leaky_relu": "negative slopes need signed neurons; retrain with nn.ReLU",
    "gelu": "retrain with nn.ReLU (GELU has no rate-coded IF equivalent)",
    "silu": "retrain with nn.ReLU (SiLU/Swish has no rate-coded IF equivalent)",
    "hardswish": "replace Hardswish with nn.ReLU6 or nn.ReLU and fine-tune",
    "hardsigmoid": "replace Hardsigmoid with nn.Hardtanh(0, 1)-style clipping and fine-tune",
    "softmax": "apply softmax to the SNN's decoded output instead of inside the model",
    "log_softmax": "apply log_softmax to the SNN's decoded output instead of inside the model",
    "elu": "retrain with nn.ReLU",
    "mul": ("products of two signals (e.g. a squeeze-and-excitation gate x * scale(x)) are not linear; remove the "
            "gate, or scale by a constant only"),
    "matmul": "products of two activations (attention) are not supported by rate conversion; use a CNN/MLP",
    "layer_norm": "LayerNorm normalises per sample and step; use BatchNorm (foldable) instead",
    "group_norm": "GroupNorm normalises per sample and step; use BatchNorm (foldable) instead",
    "max": "tensor max over activations is not linear; use a max-pool after a ReLU or an average",
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_NORMED = {_norm(k): v for k, v in SUGGESTIONS.items()}


def _suggest(key: str) -> str:
    """The rewrite suggested for an op: the longest known name it contains (``hardsigmoid`` before ``sigmoid``)."""
    key = _norm(key)
    found = [k for k in _NORMED if k in key]
    if found:
        return _NORMED[max(found, key=len)]
    return ("rewrite it with supported layers (Conv/Linear/BatchNorm/pooling/ReLU/add/cat/flatten), or "
            "wrap it in a plugin that claims it as an activation (hook snnbridge_claim_module)")


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class ConversionGraph:
    """The traced, rewritten ANN copy and what tracing found.

    ``module`` computes exactly what the user's ANN computes (in eval mode); ``sites`` lists
    activation sites in topological order; ``report`` records every rewrite (folded and
    kept BNs, rewritten functional activations, moved and kept max-pools).
    """

    module: fx.GraphModule
    sites: dict[str, SiteInfo]
    report: dict[str, list[str]] = field(default_factory=dict)

    def site_modules(self) -> dict[str, ActivationSite]:
        """name -> the :class:`ActivationSite` module of each site in ``module``."""
        return {name: cast(ActivationSite, self.module.get_submodule(site_attr(name))) for name in self.sites}


SITE_PREFIX = "snnsite_"


def site_attr(name: str) -> str:
    """Attribute name under which a site's module lives in the traced ANN and in the SNN."""
    return f"{SITE_PREFIX}{name}"


def site_of(node: fx.Node) -> str | None:
    """The site name if ``node`` calls an activation site (or its neurons), else None."""
    if node.op == "call_module" and str(node.target).startswith(SITE_PREFIX):
        return str(node.target)[len(SITE_PREFIX):]
    return None


def is_site_node(node: fx.Node) -> bool:
    """True when ``node`` calls an activation site (in the traced ANN) or its neurons (in the SNN)."""
    return site_of(node) is not None


def site_node(gm: fx.GraphModule, name: str) -> fx.Node | None:
    """The node calling site ``name`` in ``gm``, or None."""
    return next((n for n in gm.graph.nodes if site_of(n) == name), None)


ClaimFn = Callable[[nn.Module], Any]


class Tracer(fx.Tracer):
    """torch.fx tracer that keeps modules claimed by plugins (trained activations) as leaves."""

    def __init__(self, claim: ClaimFn | None = None):  # no-argument form: torch re-creates it when unpickling
        super().__init__()
        self._claim = claim or (lambda m: None)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._claim(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)


# ---------------------------------------------------------------------------------------------


def trace_for_conversion(model: nn.Module, claim: ClaimFn | None = None) -> ConversionGraph:
    """Trace a copy of ``model`` and rewrite it for conversion (see the module docstring).

    ``claim(module)`` returns a plugin's claim for modules that are activations (e.g. a QCFS
    activation), or ``None``; the core passes the plugin manager's ``claim_module`` here.
    """
    claim = claim or (lambda m: None)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"snnbridge converts torch.nn.Module instances, got {type(model).__name__}.")
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    tracer = Tracer(claim)
    try:
        graph = tracer.trace(work)
    except Exception as exc:  # torch.fx raises many kinds of errors on data-dependent code
        raise UnsupportedModelError(
            f"torch.fx could not trace the model: {type(exc).__name__}: {exc}. snnbridge needs a model whose "
            "forward has no data-dependent Python control flow (if/for on tensor values). Move such logic out of "
            "forward, or mark the offending submodule as a leaf in a plugin (snnbridge_claim_module).") from exc
    gm = fx.GraphModule(work, graph, class_name=type(model).__name__ + "Prepared")
    report: dict[str, list[str]] = {"folded_bn": [], "kept_bn": [], "rewritten_functional": [],
                                    "pre_neuron_maxpool": [], "spike_maxpool": [], "removed": []}
    sites = _insert_sites(gm, claim, report)
    _drop_identities(gm, report)
    _fold_batchnorm(gm, report)
    _reorder_maxpool(gm, sites, report)
    _check_supported(gm, claim)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    ordered = {}
    for node in gm.graph.nodes:
        name = site_of(node)
        if name is not None:
            ordered[name] = sites[name]
    return ConversionGraph(gm, ordered, report)


# -- activation sites ----------------------------------------------------------------------------


def _const(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    """Argument ``index`` of a call node, else its keyword ``key`` (fx types them loosely: read as Any)."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(key, default)


def activation_of(node: fx.Node, gm: fx.GraphModule, claim: ClaimFn):
    """Return (kind, clip_max, module, claim) if ``node`` is a recognised activation, else None."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        c = claim(m)
        if c is not None:
            kind = getattr(c, "kind", None) or type(m).__name__.lower()
            return kind, getattr(c, "clip_max", None), m, c
        if type(m) is nn.ReLU:
            return "relu", None, None, None
        if type(m) is nn.ReLU6:
            return "relu6", 6.0, None, None
        if type(m) is nn.Hardtanh and m.min_val == 0 and m.max_val > 0:
            return "clip", float(m.max_val), None, None
        return None
    if node.op == "call_function":
        t = node.target
        if t in (F.relu, torch.relu, torch.relu_, F.relu_):
            return "relu", None, None, None
        if t is F.relu6:
            return "relu6", 6.0, None, None
        if t is F.hardtanh:
            lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
            if lo == 0 and _const(hi) and hi > 0:
                return "clip", float(hi), None, None
        if t in (torch.clamp, torch.clip, torch.clamp_min):
            lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
            if t is torch.clamp_min:
                hi = None
            if lo == 0 and (hi is None or (_const(hi) and hi > 0)):
                return ("relu", None, None, None) if hi is None else ("clip", float(hi), None, None)
        return None
    if node.op == "call_method":
        t = node.target
        if t in ("relu", "relu_"):
            return "relu", None, None, None
        if t in ("clamp", "clip", "clamp_min", "clamp_", "clamp_min_"):
            lo = _arg(node, 1, "min")
            hi = None if t.startswith("clamp_min") else _arg(node, 2, "max")
            if lo == 0 and (hi is None or (_const(hi) and hi > 0)):
                return ("relu", None, None, None) if hi is None else ("clip", float(hi), None, None)
    return None


def _safe_name(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")
    return out or "act"


def unique_site_name(node: fx.Node, taken) -> tuple[str, str]:
    """A site name for an activation call not in ``taken`` (the module path or the node name), and its origin."""
    origin = str(node.target if node.op == "call_module" else node.name)
    base = _safe_name(origin)
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name, origin


def _insert_sites(gm: fx.GraphModule, claim: ClaimFn, report) -> dict[str, SiteInfo]:
    sites: dict[str, SiteInfo] = {}
    for node in list(gm.graph.nodes):
        found = activation_of(node, gm, claim)
        if found is None:
            continue
        kind, clip_max, module, c = found
        name, origin = unique_site_name(node, sites)
        source = node.format_node() or str(node)
        info = SiteInfo(name=name, kind=kind, clip_max=clip_max, source=str(origin), claim=c)
        sites[name] = info
        gm.add_submodule(site_attr(name), ActivationSite(info, activation=module))
        if node.op != "call_module":
            report["rewritten_functional"].append(f"{source} -> site {name}")
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(site_attr(name), (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    return sites


# -- identities, BN, max-pool ------------------------------------------------------------------------


def _drop_identities(gm: fx.GraphModule, report) -> None:
    for node in list(gm.graph.nodes):
        drop = False
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), DROPPED_MODULES):
            drop = True
        elif node.op == "call_function" and node.target in DROPPED_FUNCTIONS:
            drop = True
        if drop:
            report["removed"].append(str(node.target))
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def fold_bn_into(layer: nn.modules.conv._ConvNd | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Return a copy of ``layer`` (Conv/Linear) with the eval-mode ``bn`` that follows it folded in.

    PyTorch's own fusion (``torch.nn.utils.fusion``): ``w' = w * g / s`` and
    ``b' = (b - mean) * g / s + beta`` per output channel, ``s = sqrt(running_var + eps)``
    (a bias is created if the layer had none; a BN without affine parameters uses g = 1, beta = 0).
    """
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise UnsupportedModelError(f"{bn} keeps no running statistics (track_running_stats=False), so it cannot be "
                                    "folded into the layer before it; train it with track_running_stats=True.")
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(mean)
    fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
    bias = layer.bias.detach() if layer.bias is not None else None
    weight, bias = fuse(layer.weight.detach(), bias, mean, var, bn.eps, gamma, beta)
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(weight.detach(), requires_grad=False)
    fused.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return fused


def _fold_batchnorm(gm: fx.GraphModule, report) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(str(node.target))
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        ok = (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1
              and bn.track_running_stats and bn.running_mean is not None)
        if ok:
            layer = gm.get_submodule(str(prev.target))
            ok = any(type(layer) is lt and type(bn) is bt for lt, bt in CONV_BN)
        if not ok:
            report["kept_bn"].append(f"{node.target} (not directly after a single-use Conv/Linear; kept as eval-mode "
                                     "affine)")
            continue
        uses = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == prev.target)
        fused = fold_bn_into(cast(nn.Linear, gm.get_submodule(str(prev.target))), bn)  # a CONV_BN layer
        if uses == 1:
            gm.set_submodule(prev.target, fused)
            target = prev.target
        else:
            target = _safe_name(prev.target) + "_bnfold_" + _safe_name(node.target)
            gm.add_submodule(target, fused)
            prev.target = target
        report["folded_bn"].append(f"{node.target} -> {target}")
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)


def _is_maxpool(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), MAXPOOL_MODULES)
    return node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS


def _reorder_maxpool(gm: fx.GraphModule, sites: dict[str, SiteInfo], report) -> None:
    for node in list(gm.graph.nodes):
        if not _is_maxpool(node, gm):
            continue
        src = node.args[0]
        name = site_of(src) if isinstance(src, fx.Node) else None
        if not (name is not None and len(src.users) == 1):
            report["spike_maxpool"].append(f"{node.format_node()} (pools weighted spikes per step: lossy)")
            continue
        info = sites[name]
        with gm.graph.inserting_after(node):
            moved = gm.graph.call_module(src.target, (node,))
        node.replace_all_uses_with(moved, delete_user_cb=lambda user, moved=moved: user is not moved)
        node.args = (src.args[0],) + tuple(node.args[1:])
        gm.graph.erase_node(src)
        info.pre_pool = str(node.target if node.op == "call_module" else node.name)
        report["pre_neuron_maxpool"].append(f"{info.pre_pool} moved before site {info.name}")


# -- support check -------------------------------------------------------------------------------------


def input_dependent(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value depends on the model's input: signals. A buffer or parameter read
    (``get_attr``) and what is computed from such constants alone are constants (``(x - self.mean) /
    self.std`` is an affine map of the signal ``x``)."""
    signals: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in signals for a in node.all_input_nodes):
            signals.add(node)
    return signals


def _dims_touch_batch(node: fx.Node) -> bool:
    """True when a dim argument of a reduction/permutation refers to dimension 0."""
    dims = []
    for a in list(node.args[1:]) + [node.kwargs.get("dim"), node.kwargs.get("dims")]:
        if isinstance(a, int) and not isinstance(a, bool):
            dims.append(a)
        elif isinstance(a, (tuple, list)):
            dims.extend(d for d in a if isinstance(d, int))
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name in ("transpose", "permute"):
        if name == "permute":
            order = [d for d in dims]
            return bool(order) and order[0] != 0
        return 0 in dims
    if name in ("cat", "concat") and not dims and "dim" not in node.kwargs:
        return True  # torch.cat default dim is 0 = batch
    if name in ("chunk", "split"):
        return bool(len(node.args) > 2 and node.args[2] == 0 or node.kwargs.get("dim") == 0)
    if name in ("mean", "sum") and not dims:
        return True  # full reduction mixes samples (and time steps)
    return 0 in dims


def _check_call(node: fx.Node, signals: set[fx.Node]) -> tuple[str, str] | None:
    """``(op, the fix)`` for a ``call_function``/``call_method`` node the runtime cannot run, or None."""
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        label, scalar_ok, linear_ok = name, node.target in SCALAR_FUNCTIONS, node.target in LINEAR_FUNCTIONS
        kind = "function"
    else:
        name = node.target
        label, scalar_ok, linear_ok = f".{name}()", name in SCALAR_METHODS, name in SAFE_METHODS
        kind = "method"
    if scalar_ok:
        if sum(a in signals for a in node.args if isinstance(a, fx.Node)) >= 2:
            return f"{label} of two signals", _suggest("mul")
        return None
    if linear_ok:
        if name in DIM0_SENSITIVE and _dims_touch_batch(node):
            return (f"{label} over dimension 0", "it mixes samples and time steps; operate on dimensions >= 1 only "
                    "(dimension 0 is the batch)")
        return None
    return f"{kind} {label}", _suggest(name)


def _where(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _check_supported(gm: fx.GraphModule, claim: ClaimFn) -> None:
    """Refuse the model, listing every unsupported op once with where it occurs and one suggested rewrite."""
    groups: dict[tuple[str, str], list[str]] = {}
    signals = input_dependent(gm)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, (ActivationSite,) + STATELESS_MODULES):
                continue
            found: tuple[str, str] | None = (f"module {type(m).__name__}", _suggest(type(m).__name__))
        else:
            found = _check_call(node, signals)
        if found:
            groups.setdefault(found, []).append(_where(node))
    problems = []
    for (op, fix), places in groups.items():
        shown = ", ".join(places[:4]) + (f" and {len(places) - 4} more" if len(places) > 4 else "")
        problems.append(f"{op} ({len(places)}x: {shown}) -> {fix}")
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if outputs and not isinstance(outputs[0].args[0], fx.Node):
        problems.append("the model returns a tuple/dict; snnbridge decodes a single output tensor -> return one tensor "
                        "(e.g. the logits) from forward")
    if problems:
        lines = "\n  - ".join(problems)
        count = sum(len(p) for p in groups.values())
        raise UnsupportedModelError(
            f"the model has {count} operation(s) of {len(problems)} kind(s) that cannot be converted to spiking "
            f"neurons:\n  - {lines}\nNothing was converted. Apply the rewrite after each '->' and convert again.")
