"""Binary spikes: fold every site's threshold into the surrounding weights (``fold_scales``).

A converted site emits weighted spikes ``theta * s(t)``. Because the IF neuron is positively
homogeneous (charge, ``>=`` test and reset by subtraction all scale with the potential),
dividing a site's drive, initial potential and per-step bias by ``theta`` and giving it
threshold 1 yields the same 0/1 spikes ``s(t)``; multiplying the weights that *consume* those
spikes by ``theta`` along their input channels restores the next layer's drive. After folding
every neuron has threshold 1, every site emits 0/1 spikes, and the output equals the
unfolded SNN's up to float rounding. This is the weight normalisation of Diehl et al. (IJCNN
2015) and Rueckauer et al. (Front. Neurosci. 2017, github.com/NeuromorphicProcessorProject/snn_toolbox)
applied after all of a recipe's corrections.

How the scales move through the graph (``scale``: folded value = original value / scale):

* a Conv/Linear (or a kept BatchNorm) absorbs the scale of its input (weights times the
  input scale, per input channel; through flatten, per flattened feature) and produces the
  scale the site it feeds wants (weight and bias divided by theta, per output channel);
* pooling (average, max), padding, time broadcast, negation, scalar products and reshapes
  pass a scale on; ``cat`` along channels concatenates them; an add needs equal scales;
* a site needs its input in units of its threshold, and emits 0/1 spikes in those units;
* the network's output must come out unscaled (the analog head absorbs the last spikes).

What cannot be folded is refused with a :class:`~snnbridge.errors.InputError` naming the
site and the reason, and nothing is changed: a residual add joining branches in different
units (an identity shortcut carries another site's spikes), a layer feeding two sites with
different thresholds, a layer called more than once, a site fed through an operation that
does not commute with a per-channel scale, or a per-input correction that does not declare
itself threshold-relative. Per-input corrections (``snnbridge.SiteCorrection``) decide from
potentials: after folding they see potentials and thresholds in units of theta, which is
exact for corrections whose every term is a multiple of ``record.threshold`` (COS's offset
shift, SRP's masks); such a class says so with ``threshold_relative = True``.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from .corrections import class_ref
from .errors import InputError
from .feeding import feeding_layer
from .graph import site_of
from .spec import NeuronSpec
from .timeline import TimeExpand

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import SpikingModel

_ABSORBING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: modules that commute with a positive per-channel scale (and keep the channel axis)
_CHANNEL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.ZeroPad2d, nn.Upsample)
_CHANNEL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                      F.adaptive_avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.interpolate}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"}
_SAME_FUNCTIONS = {operator.neg, operator.pos, torch.neg}
_SAME_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "to", "type_as", "neg"}
_ADD = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd, operator.isub}
_ADD_METHODS = {"add", "sub", "add_", "sub_"}
_SCALAR = {operator.mul, operator.truediv, torch.mul, torch.div, operator.imul, operator.itruediv}
_SCALAR_METHODS = {"mul", "div", "mul_", "div_"}
_CAT = {torch.cat, torch.concat}
_REDUCE_METHODS = {"mean", "sum"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum}


@dataclass
class _Scale:
    """A node's scale: ``value`` (shape of the node's output without batch), and where it comes from."""

    value: torch.Tensor
    origin: str


def _desc(th: Any) -> str:
    if isinstance(th, float):
        return f"{th:.4g}"
    return f"per channel [{th.shape[0]}], {float(th.min()):.4g}..{float(th.max()):.4g}"


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if isinstance(a.meta.get("fold_shape"), tuple)]


class _ShapeProp(fx.Interpreter):
    """Records every node's output shape; neurons and the time broadcast pass their input through."""

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        n.meta["fold_shape"] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out

    def call_module(self, target, args, kwargs):
        from .runtime import SpikingSite

        if isinstance(self.submodule(target), (SpikingSite, TimeExpand)):
            return args[0]
        return super().call_module(target, args, kwargs)

    def submodule(self, target) -> nn.Module:
        return self.module.get_submodule(str(target))


def _per_channel(s: torch.Tensor, what: str) -> torch.Tensor | None:
    """``s`` (``[C, ...]``) as ``[C]`` when it is constant over every position, else None."""
    flat = s.reshape(s.shape[0], -1) if s.dim() else s.reshape(1, 1)
    first = flat[:, :1]
    return first[:, 0] if torch.equal(flat, first.expand_as(flat)) else None


def _channel_scale(vec: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``[C]`` (or a 0-d value) expanded to a per-element scale of ``shape`` (the output without batch)."""
    if vec.dim() == 0:
        return vec.expand(shape).clone()
    view = [vec.shape[0]] + [1] * (len(shape) - 1)
    return vec.view(view).expand(shape).clone()


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    one = torch.ones(())
    a = one if a is None else a
    b = one if b is None else b
    return torch.allclose(a.double(), b.double(), rtol=1e-6, atol=0.0)


class _Fold:
    """One fold of ``snn`` (a copy): computes every change first, applies them only if all sites fold."""

    def __init__(self, snn: SpikingModel):
        self.snn = snn
        self.gm = snn.graph_module
        self.specs = snn.specs
        self.scales: dict[fx.Node, _Scale | None] = {}
        self.want: dict[fx.Node, tuple[torch.Tensor, str]] = {}
        self.layers: dict[str, tuple[nn.Module, torch.Tensor | None, torch.Tensor | None]] = {}
        self.calls: dict[str, int] = {}
        for n in self.gm.graph.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1

    # -- helpers -----------------------------------------------------------------------------------------
    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None

    def next_site(self, node: fx.Node) -> str:
        seen, stack = set(), [node]
        while stack:
            n = stack.pop(0)
            if n in seen:
                continue
            seen.add(n)
            name = site_of(n)
            if name is not None and n is not node:
                return f"site {name!r}"
            stack.extend(n.users)
        return "the network's output"

    def fail(self, node: fx.Node, why: str) -> NoReturn:
        raise InputError(f"fold_scales: {self.next_site(node)} cannot be folded into 0/1 spikes: {why}. Nothing was "
                         "changed; convert without fold_scales (the SNN then keeps weighted spikes theta * s), or "
                         "change the model (e.g. give the shortcut its own Conv/Linear).")

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        shape = node.meta.get("fold_shape")
        assert isinstance(shape, tuple)
        return shape[1:]

    # -- the desired output scale of every layer feeding a site (backward) --------------------------------
    def desire(self) -> None:
        for node in self.gm.graph.nodes:
            name = site_of(node)
            if name is None:
                continue
            th = self.specs[name].threshold
            vec = torch.as_tensor(th, dtype=torch.float64)
            stack = [node.args[0]]
            while stack:
                n = stack.pop()
                if not isinstance(n, fx.Node):
                    continue
                m = self.module(n)
                if isinstance(m, _ABSORBING):
                    old = self.want.get(n)
                    if old is not None and old[1] != name and not _same(old[0], vec):
                        other = _desc(self.specs[old[1]].threshold)
                        raise InputError(
                            f"fold_scales: layer {n.target!r} feeds site {old[1]!r} (threshold {other}) "
                            f"and site {name!r} (threshold {_desc(th)}); one layer cannot produce its output in both "
                            "units. Nothing was changed; convert without fold_scales, or use one threshold for both "
                            "sites.")
                    self.want[n] = (vec, name)
                elif self._passes_back(n, m):
                    stack.extend(_tensor_args(n))

    def _passes_back(self, n: fx.Node, m: nn.Module | None) -> bool:
        if m is not None:
            return isinstance(m, _CHANNEL_MODULES + (TimeExpand,))
        if n.op == "call_function":
            return n.target in _ADD | _CHANNEL_FUNCTIONS | _SAME_FUNCTIONS | _SCALAR
        if n.op == "call_method":
            return n.target in _ADD_METHODS | _SAME_METHODS | _SCALAR_METHODS
        return False

    # -- the scale of every node (forward) ----------------------------------------------------------------
    def propagate(self) -> None:
        for node in self.gm.graph.nodes:
            self.scales[node] = self.scale_of(node)

    def arg_scale(self, node: fx.Node, i: int = 0) -> _Scale | None:
        a = node.args[i] if len(node.args) > i else None
        return self.scales.get(a) if isinstance(a, fx.Node) else None

    def scale_of(self, node: fx.Node) -> _Scale | None:
        if node.op in ("placeholder", "get_attr"):
            return None
        if node.op == "output":
            s = self.arg_scale(node)
            if s is not None and not _same(s.value, None):
                self.fail(node, f"the network's output carries {s.origin} unscaled by any layer (a network ending "
                                "in neurons has no analog layer to absorb the threshold)")
            return None
        ins = {a: self.scales.get(a) for a in _tensor_args(node)}
        scaled = {a: s for a, s in ins.items() if s is not None}
        shape = node.meta.get("fold_shape")
        if not isinstance(shape, tuple):  # sizes, dims: not tensors
            return None
        out_shape = shape[1:]
        m = self.module(node)
        name = site_of(node)
        if name is not None:
            return self.site(node, name, out_shape)
        if isinstance(m, _ABSORBING):
            return self.absorb(node, m, out_shape)
        if not scaled:
            return None
        s = next(iter(scaled.values()))
        if m is not None:
            if isinstance(m, TimeExpand):
                return s
            if isinstance(m, _CHANNEL_MODULES):
                return self.channelwise(node, s, out_shape)
            if isinstance(m, (nn.Flatten, nn.Unflatten)):
                return _Scale(s.value.reshape(out_shape), s.origin)
            self.fail(node, f"{s.origin} reaches module {node.target!r} ({type(m).__name__}), which does not commute "
                            "with a per-channel scale")
        target = node.target
        if node.op == "call_function":
            is_add, is_chan = target in _ADD, target in _CHANNEL_FUNCTIONS
            is_same, is_scalar = target in _SAME_FUNCTIONS, target in _SCALAR
            is_reshape, is_cat, is_reduce = target in _RESHAPE_FUNCTIONS, target in _CAT, target in _REDUCE_FUNCTIONS
            label = getattr(target, "__name__", str(target))
        else:
            is_add, is_chan, is_same = target in _ADD_METHODS, False, target in _SAME_METHODS
            is_scalar, is_reshape, is_cat = target in _SCALAR_METHODS, target in _RESHAPE_METHODS, False
            is_reduce, label = target in _REDUCE_METHODS, f".{target}()"
        if is_add:
            return self.add(node, ins, label)
        if is_scalar:
            if len(ins) > 1:
                self.fail(node, f"{label} multiplies two signals")
            return s
        if is_same:
            return s
        if is_chan:
            return self.channelwise(node, s, out_shape)
        if is_reshape:
            return _Scale(s.value.reshape(out_shape), s.origin)
        if is_cat:
            return self.cat(node, out_shape)
        if is_reduce:
            return self.reduce(node, s, out_shape)
        self.fail(node, f"{s.origin} reaches {label} (node {node.name!r}), which snnbridge cannot pass a per-channel "
                        "scale through")
        return None

    def site(self, node: fx.Node, name: str, out_shape) -> _Scale:
        spec = self.specs[name]
        s = self.arg_scale(node)
        th = torch.as_tensor(spec.threshold, dtype=torch.float64)
        want = _channel_scale(th, out_shape)
        if s is None or not _same(s.value, want):
            got = "unscaled values (no Conv/Linear right before it can take its threshold)" if s is None else s.origin
            self.fail(node.args[0] if isinstance(node.args[0], fx.Node) else node,
                      f"its input must come in units of its threshold ({_desc(spec.threshold)}) but carries {got}")
        return _Scale(want, f"the spikes of site {name!r} (threshold {_desc(spec.threshold)})")

    def absorb(self, node: fx.Node, m: nn.Module, out_shape) -> _Scale | None:
        s = self.arg_scale(node)
        target = str(node.target)
        s_in: torch.Tensor | None = None
        if s is not None:
            if isinstance(m, nn.Linear):
                flat = s.value.reshape(-1, s.value.shape[-1]) if s.value.dim() else s.value.reshape(1, 1)
                if not torch.equal(flat, flat[:1].expand_as(flat)):
                    self.fail(node, f"{s.origin} reaches Linear {target!r} varying along a dimension it does not "
                                    "mix")
                s_in = flat[0]
            else:
                s_in = _per_channel(s.value, target)
                if s_in is None:
                    self.fail(node, f"{s.origin} reaches {type(m).__name__} {target!r} varying over positions")
        wanted = self.want.get(node)
        s_out = wanted[0] if wanted is not None else None
        if s_in is None and s_out is None:
            return None
        if self.calls[target] > 1:
            self.fail(node, f"layer {target!r} is called {self.calls[target]} times; changing its weights would "
                            "change every call")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.running_mean is None or not m.affine):
            self.fail(node, f"the BatchNorm {target!r} has no running statistics or no affine parameters to scale")
        assert s_in is None or s_in.dim() == 1
        self.layers[target] = (m, s_in, s_out)
        if s_out is None:
            return None
        assert wanted is not None
        return _Scale(_channel_scale(s_out, out_shape), f"layer {target!r} in units of site {wanted[1]!r}")

    def channelwise(self, node: fx.Node, s: _Scale, out_shape) -> _Scale:
        vec = _per_channel(s.value, str(node.target))
        if vec is None:
            self.fail(node, f"{s.origin} varies over positions where {node.name!r} pools or resamples them")
        assert vec is not None
        return _Scale(_channel_scale(vec, out_shape), s.origin)

    def add(self, node: fx.Node, ins: dict, label: str) -> _Scale | None:
        nodes = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        constants = [a for a in node.args[:2] if not isinstance(a, fx.Node)]
        scales = [ins.get(a) for a in nodes]
        first = scales[0]
        for other in scales[1:]:
            a = first.value if first is not None else None
            b = other.value if other is not None else None
            if not _same(a, b):
                what = [s.origin if s is not None else "unscaled values" for s in (first, other)]
                self.fail(node, f"the residual {label} {node.name!r} joins {what[0]} with {what[1]}; an add of "
                                "differently scaled branches has no single scale to fold")
        if first is not None and any(c != 0 for c in constants):
            self.fail(node, f"{label} {node.name!r} adds a constant to {first.origin}")
        return first

    def cat(self, node: fx.Node, out_shape) -> _Scale | None:
        parts: Any = node.args[0]
        dim: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts):
            self.fail(node, f"cat {node.name!r} has inputs that are not plain tensors")
        parts = cast(list, parts)
        ndim = len(out_shape) + 1
        dim = int(dim) % ndim
        if dim == 0:
            self.fail(node, f"cat {node.name!r} joins along the batch dimension")
        values = []
        origins = []
        for p in parts:
            s = self.scales.get(p)
            values.append(s.value if s is not None else torch.ones(self.shape(p), dtype=torch.float64))
            if s is not None:
                origins.append(s.origin)
        return _Scale(torch.cat(values, dim - 1), " and ".join(dict.fromkeys(origins)))

    def reduce(self, node: fx.Node, s: _Scale, out_shape) -> _Scale:
        vec = _per_channel(s.value, node.name)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        ndim = s.value.dim() + 1
        listed = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (list, tuple)) else None
        if vec is None or listed is None or any(int(d) % ndim in (0, 1) for d in listed):
            self.fail(node, f"{s.origin} is reduced by {node.name!r} over the channel or batch dimension")
        assert vec is not None
        return _Scale(_channel_scale(vec, out_shape), s.origin)

    # -- applying -----------------------------------------------------------------------------------------
    def check_corrections(self) -> None:
        for name, site in self.snn.sites.items():
            for c in site.corrections:
                if not c.threshold_relative:
                    raise InputError(
                        f"fold_scales: site {name!r} cannot be folded: its per-input correction "
                        f"{class_ref(type(c))} decides from membrane potentials and does not declare "
                        "threshold_relative = True, so it may not give the same decision in units of the threshold. "
                        "Nothing was changed; convert without fold_scales, or (plugin authors) set "
                        "threshold_relative = True on a correction whose every term is a multiple of "
                        "record.threshold.")

    def folded_spec(self, name: str, spec: NeuronSpec) -> tuple[NeuronSpec, torch.Tensor | None]:
        """The spec in units of its threshold, and a per-channel constant bias to add to the feeding layer."""
        th = spec.threshold
        per_channel = isinstance(th, torch.Tensor)
        th64 = torch.as_tensor(th, dtype=torch.float64)
        v0: Any = spec.v0
        if isinstance(v0, float) and not per_channel:
            v0 = v0 / float(th)
        else:
            v0t = torch.as_tensor(v0, dtype=torch.float64)
            if v0t.dim() == 0:
                v0 = (v0t / th64).float()
            else:
                view = [-1] + [1] * (v0t.dim() - 1) if per_channel else []
                v0 = (v0t / (th64.view(view) if per_channel else th64)).float()
        b = spec.step_bias
        extra = None
        if isinstance(b, float):
            if per_channel:
                extra, b = torch.full_like(th64, b) / th64, None
            else:
                b = b / float(th)
        elif isinstance(b, torch.Tensor):
            b64 = b.double()
            if b64.dim() == 1 and per_channel:
                b = (b64[:, None] / th64[None, :]).float()
            elif b64.dim() == 2 and per_channel:
                b = (b64 / th64[None, :]).float()
            else:
                b = (b64 / th64).float()
        if extra is not None and feeding_layer(self.gm, name) is None:
            raise InputError(f"fold_scales: site {name!r} cannot be folded: its constant per-step bias "
                             f"({spec.step_bias}) becomes a different value per channel under its per-channel "
                             "threshold, and no single Conv/Linear feeding it can hold it as a bias. Nothing was "
                             "changed; convert without fold_scales.")
        return NeuronSpec(threshold=1.0, v0=v0, step_bias=b), extra

    def apply(self) -> dict:
        new_specs = {name: self.folded_spec(name, spec) for name, spec in self.specs.items()}
        with torch.no_grad():
            for m, s_in, s_out in self.layers.values():
                _scale_layer(m, s_in, s_out)
            for name, (spec, extra) in new_specs.items():
                self.snn.set_spec(name, spec)
                if extra is not None:
                    feed = feeding_layer(self.gm, name)
                    assert feed is not None  # checked in folded_spec
                    feed.add_bias(extra)
        return {"sites": {n: _desc(s.threshold) for n, s in self.specs.items()},
                "layers": {t: {"input": s_in is not None, "output": s_out is not None}
                           for t, (_, s_in, s_out) in self.layers.items()}}


def _scale_layer(m: nn.Module, s_in: torch.Tensor | None, s_out: torch.Tensor | None) -> None:
    """``m``'s weights times the input scale (per input channel / feature), weights and bias over the output scale."""
    weight = cast(torch.Tensor, m.weight)
    dtype = weight.dtype
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        mean = cast(torch.Tensor, m.running_mean)
        w = weight.double()
        if s_in is not None:
            mean.copy_((mean.double() / s_in).to(mean.dtype))
            w = w * s_in
        if s_out is not None:
            w = w / s_out
            cast(torch.Tensor, m.bias).data.copy_((cast(torch.Tensor, m.bias).double() / s_out).to(dtype))
        weight.data.copy_(w.to(dtype))
        return
    w = weight.double()
    extra = [1] * (w.dim() - 2)
    if s_in is not None:
        if isinstance(m, nn.Linear):
            factor = s_in.view(1, -1)
        else:
            groups = int(getattr(m, "groups", 1))
            c_out, c_in_g = w.shape[0], w.shape[1]
            factor = s_in.view(groups, c_in_g).repeat_interleave(c_out // groups, 0)
        w = w * factor.view(w.shape[0] if factor.shape[0] != 1 else 1, w.shape[1], *extra)
    if s_out is not None:
        vec = s_out if s_out.dim() else s_out.expand(w.shape[0])
        w = w / vec.view(-1, 1, *extra)
        if m.bias is not None:
            bias = cast(torch.Tensor, m.bias)
            bias.data.copy_((bias.double() / vec).to(bias.dtype))
    weight.data.copy_(w.to(dtype))


def fold_in_place(snn: SpikingModel) -> dict:
    """Fold ``snn`` itself (see the module docstring); returns what was folded (also ``snn.report["fold_scales"]``).

    Every check runs before anything changes: on an error the SNN is as it was.
    """
    if snn.input_shape is None:
        raise InputError("fold_scales: the SNN does not know its input shape yet; run it once on a batch (snn(x)) "
                         "or convert with calibration data or example_input.")
    param = next(snn.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        _ShapeProp(snn.graph_module).run(torch.zeros(1, *snn.input_shape, dtype=dtype, device=device))
    job = _Fold(snn)
    job.check_corrections()
    job.desire()
    job.propagate()
    summary = job.apply()
    snn.report["fold_scales"] = summary
    return summary


def fold_scales(snn: SpikingModel) -> SpikingModel:
    """A copy of ``snn`` with every threshold folded into the weights: threshold 1, 0/1 spikes, same output.

    ``snn`` itself is not changed. What cannot be folded raises an
    :class:`~snnbridge.errors.InputError` naming the site and why (see :mod:`snnbridge.folding`).
    """
    from .runtime import SpikingModel

    if not isinstance(snn, SpikingModel):
        raise InputError(f"fold_scales takes the SpikingModel returned by snnbridge.convert, got {type(snn).__name__}.")
    folded = copy.deepcopy(snn)
    fold_in_place(folded)
    return folded


def is_folded(snn: SpikingModel) -> bool:
    """True when every site of ``snn`` has threshold 1 (its spikes are 0/1 values)."""
    return all(isinstance(s.threshold, float) and s.threshold == 1.0 for s in snn.specs.values())
