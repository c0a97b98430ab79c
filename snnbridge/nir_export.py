"""``snnbridge.export_nir``: a converted SNN as a NIR graph (Neuromorphic Intermediate Representation).

NIR (Pedersen et al., Nature Communications 2024; github.com/neuromorphs/NIR) describes a
network as nodes (``Conv1d``/``Conv2d``, ``Affine``/``Linear``, ``AvgPool2d``, ``Flatten``, neuron
models such as ``IF``) and edges; a node with several incoming edges sums them, which is how a
residual add is written. The export works on the folded graph (:mod:`snnbridge.folding`:
threshold 1, 0/1 spikes); an unfolded SNN is folded on a copy first.

What NIR cannot say, and what the export does about it:

* **reset by subtraction.** NIR's ``IF`` (``dv/dt = R I``; fire on ``v > v_threshold``; then
  ``v = v_reset``) resets to a value; every snnbridge neuron resets by subtraction, which rate
  coding depends on. ``reset="subtract"`` (the default) therefore refuses; ``reset="zero"`` writes
  ``v_reset = 0``, an explicit lossy export (docs/export.md reports the accuracy it costs).
* **initial potentials.** ``IF`` has no initial state. A site with ``v0 != 0`` (QCFS, OPI,
  LTB, calibration's potential correction) is refused unless ``v0="metadata"``, which writes
  the folded ``v0`` into that node's ``metadata["v0"]`` (readers that ignore metadata start at 0).
* **firing rule.** snnbridge fires on ``v >= threshold``, NIR on ``v > v_threshold``: they differ
  only when the membrane lands exactly on the threshold.
* **time.** ``r = 1 / dt`` with ``dt`` the step (default 1), so a reader integrating ``dt * r * I`` adds
  the drive once per step (SpikingJelly's ``nir_exchange`` checks ``r == 1 / dt``).
* per-input corrections (COS, SRP), per-step bias tables (FTBC, calibration with per-channel
  thresholds), max-pooling and layers without a NIR node raise an
  :class:`~snnbridge.errors.InputError` naming the site or node. A constant per-step bias is
  written into the bias of the Conv/Linear feeding the site.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .corrections import class_ref
from .errors import InputError, MissingRequirementError
from .feeding import feeding_layer
from .folding import _ShapeProp, fold_scales, is_folded
from .graph import site_of
from .timeline import TimeExpand

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import SpikingModel

RESETS = ("subtract", "zero")
V0_MODES = ("error", "metadata")
_ALIAS_METHODS = {"contiguous", "clone", "detach", "float", "to", "type_as"}
_ADD = {"add", "iadd"}
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d}


def _nir():
    try:
        import nir
    except ImportError as exc:
        raise MissingRequirementError("snnbridge.export_nir needs the 'nir' package: pip install 'snnbridge[nir]' "
                                      "(or pip install nir nirtorch).") from exc
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def check_exportable(snn: SpikingModel) -> None:
    """Refuse, naming the site or node, what a NIR graph cannot hold (see the module docstring)."""
    for name, site in snn.sites.items():
        for c in site.corrections:
            raise InputError(f"export_nir: site {name!r} has a per-input correction ({class_ref(type(c))}, e.g. COS's "
                             "offset shift or SRP's masks) that is decided at run time from a pre-simulation of every "
                             "input; a NIR graph has no node for it. Export an SNN converted without it.")
        b = site.spec.step_bias
        if isinstance(b, torch.Tensor):
            raise InputError(f"export_nir: site {name!r} has a per-step bias table ({list(b.shape)}, e.g. FTBC's "
                             "temporal bias); a NIR graph has no per-step input. Export an SNN converted without it.")
    gm = snn.graph_module
    for node in gm.graph.nodes:
        is_max = (node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _MAXPOOL)) or (
            node.op == "call_function" and node.target in _MAXPOOL_FUNCTIONS)
        if is_max:
            where = next((site_of(u) for u in node.users if site_of(u) is not None), None)
            what = (f"moved in front of site {where!r} (it pools input currents)" if where is not None
                    else "after neurons (it pools weighted spikes per step)")
            raise InputError(f"export_nir: the max-pool {_label(node)} is {what}; NIR has no max-pool node. Export a "
                             "network with average pooling.")


def _pair(v) -> tuple[int, ...]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def _label(node: fx.Node) -> str:
    return repr(str(node.target)) if node.op == "call_module" else repr(node.name)


class _Builder:
    def __init__(self, snn: SpikingModel, nir: Any, v0: str, dt: float):
        self.snn, self.nir, self.v0, self.dt = snn, nir, v0, float(dt)
        self.gm = snn.graph_module
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[fx.Node, list[str]] = {}
        self.extra_bias: dict[str, torch.Tensor] = {}

    def fail(self, node: fx.Node, why: str) -> NoReturn:
        raise InputError(f"export_nir: node {_label(node)} cannot be written to NIR: {why}.")

    def shape(self, node: Any) -> tuple[int, ...]:
        shape = node.meta.get("fold_shape") if isinstance(node, fx.Node) else None
        if not isinstance(shape, tuple):
            raise InputError(f"export_nir: node {node!r} does not produce a tensor; NIR edges carry tensors.")
        return shape[1:]

    def src(self, node: fx.Node, i: int = 0) -> list[str]:
        a = node.args[i] if len(node.args) > i else None
        if not isinstance(a, fx.Node) or a not in self.sources:
            self.fail(node, "its input is not a tensor produced by the network")
        return self.sources[a]

    def add(self, node: fx.Node, nir_node: Any, inputs: list[str]) -> None:
        self.nodes[node.name] = nir_node
        self.edges.extend((s, node.name) for s in inputs)
        self.sources[node] = [node.name]

    def build(self):
        nir = self.nir
        # constant per-step biases (folded units) go into the bias of the layer feeding the site
        for name, site in self.snn.sites.items():
            b = site.spec.step_bias
            if isinstance(b, float) and b != 0.0:
                feed = feeding_layer(self.gm, name)
                if feed is None:
                    raise InputError(f"export_nir: site {name!r} has a constant per-step bias ({b:.4g}) and no single "
                                     "Conv/Linear feeding it to hold it as a bias; NIR has no per-step input.")
                c = int(cast(torch.Tensor, feed.layer.weight).shape[0])
                self.extra_bias[feed.node.name] = self.extra_bias.get(feed.node.name, torch.zeros(c)) + b
        for node in self.gm.graph.nodes:
            self.visit(node)
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges)

    def visit(self, node: fx.Node) -> None:
        nir = self.nir
        if node.op == "placeholder":
            self.nodes["input"] = nir.Input(input_type=np.array(self.shape(node)))
            self.sources[node] = ["input"]
            return
        if node.op == "output":
            res = node.args[0]
            if not isinstance(res, fx.Node):
                self.fail(node, "the network returns more than one tensor")
            self.nodes["output"] = nir.Output(output_type=np.array(self.shape(res)))
            self.edges.extend((s, "output") for s in self.sources[res])
            return
        if node.op == "get_attr":
            self.fail(node, "a constant tensor has no NIR node")
        name = site_of(node)
        if name is not None:
            self.neuron(node, name)
            return
        if node.op == "call_module":
            m = self.gm.get_submodule(str(node.target))
            if isinstance(m, TimeExpand):
                self.sources[node] = self.src(node)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                self.conv(node, m)
            elif isinstance(m, nn.Linear):
                self.linear(node, m)
            elif isinstance(m, nn.AvgPool2d):
                self.avgpool(node, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                             m.divisor_override)
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                self.adaptive(node)
            elif isinstance(m, nn.Flatten):
                self.flatten(node)
            else:
                self.fail(node, f"{type(m).__name__} has no NIR node (supported: Conv1d, Conv2d, Linear, AvgPool2d, "
                                "AdaptiveAvgPool2d with whole windows, Flatten, residual adds, neurons)")
            return
        target = node.target
        label = getattr(target, "__name__", str(target))
        if (label in _ADD and node.op == "call_function") or (node.op == "call_method" and target == "add"):
            operands: list[Any] = list(node.args[:2])
            if not all(isinstance(a, fx.Node) for a in operands) or node.kwargs.get("alpha", 1) != 1:
                self.fail(node, "only the sum of two tensors maps to NIR (edges into one node are summed)")
            srcs = self.sources[operands[0]] + self.sources[operands[1]]
            if len(set(srcs)) != len(srcs):
                self.fail(node, "it adds a value to itself; NIR sums distinct edges")
            self.sources[node] = srcs
            return
        if node.op == "call_method" and target in _ALIAS_METHODS:
            self.sources[node] = self.src(node)
            return
        if (node.op == "call_function" and target in (torch.flatten, torch.reshape)) or (
                node.op == "call_method" and target in ("flatten", "view", "reshape")):
            self.flatten(node)
            return
        if node.op == "call_function" and target is F.adaptive_avg_pool2d:
            self.adaptive(node)
            return
        if node.op == "call_function" and target is F.avg_pool2d:
            args = list(node.args[1:]) + [None] * 6
            kernel = args[0] if args[0] is not None else node.kwargs["kernel_size"]
            stride = args[1] if args[1] is not None else node.kwargs.get("stride") or kernel
            self.avgpool(node, kernel, stride, args[2] if args[2] is not None else node.kwargs.get("padding", 0),
                         bool(args[3] or node.kwargs.get("ceil_mode", False)),
                         node.kwargs.get("count_include_pad", True if args[4] is None else args[4]),
                         node.kwargs.get("divisor_override", args[5]))
            return
        if node.op in ("call_function", "call_method") and not isinstance(node.meta.get("fold_shape"), tuple):
            return  # sizes and dims (x.size(0) of a view): no tensor, no NIR node
        self.fail(node, f"{label} has no NIR node")

    # -- node types ---------------------------------------------------------------------------------------
    def neuron(self, node: fx.Node, name: str) -> None:
        spec = self.snn.sites[name].spec
        shape = self.shape(node)
        v0 = torch.as_tensor(spec.v0_tensor(torch.zeros(1, *shape))[0])
        metadata: dict[str, Any] = {"site": name}
        if bool((v0 != 0).any()):
            if self.v0 == "error":
                raise InputError(f"export_nir: site {name!r} starts from a non-zero membrane potential (v0 = "
                                 f"{float(v0.min()):.4g}..{float(v0.max()):.4g} in units of the threshold, e.g. QCFS's "
                                 "or OPI's theta/2) and NIR's IF has no initial state. Pass v0='metadata' to write it "
                                 "into the node's metadata['v0'] (readers that ignore it start from 0: lossy), or "
                                 "convert with v0 = 0.")
            metadata["v0"] = _np(v0)
        ones = np.ones(shape, dtype=np.float32)
        if_node = self.nir.IF(r=ones / self.dt, v_threshold=ones * float(spec.threshold),
                              v_reset=np.zeros(shape, dtype=np.float32), metadata=metadata)
        self.add(node, if_node, self.src(node))

    def _bias(self, node: fx.Node, m: nn.Module) -> np.ndarray:
        weight = m.weight
        assert isinstance(weight, torch.Tensor)
        bias = m.bias if isinstance(m.bias, torch.Tensor) else torch.zeros(weight.shape[0])
        extra = self.extra_bias.get(node.name)
        return _np(bias.detach().cpu().double() + (extra.double() if extra is not None else 0.0))

    def conv(self, node: fx.Node, m: nn.Conv1d | nn.Conv2d) -> None:
        if m.padding_mode != "zeros":
            self.fail(node, f"padding_mode={m.padding_mode!r}; NIR convolutions pad with zeros")
        in_shape = self.shape(node.args[0])
        padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        if isinstance(m, nn.Conv1d):
            nir_node = self.nir.Conv1d(input_shape=in_shape[-1], weight=_np(m.weight), stride=m.stride[0],
                                       padding=padding if isinstance(padding, str) else padding[0],
                                       dilation=m.dilation[0], groups=m.groups, bias=self._bias(node, m))
        else:
            nir_node = self.nir.Conv2d(input_shape=tuple(in_shape[-2:]), weight=_np(m.weight), stride=tuple(m.stride),
                                       padding=padding, dilation=tuple(m.dilation), groups=m.groups,
                                       bias=self._bias(node, m))
        self.add(node, nir_node, self.src(node))

    def linear(self, node: fx.Node, m: nn.Linear) -> None:
        if len(self.shape(node.args[0])) != 1:
            self.fail(node, "NIR's Affine takes a flat vector; flatten before the Linear")
        if m.bias is None and node.name not in self.extra_bias:
            nir_node = self.nir.Linear(weight=_np(m.weight))
        else:
            nir_node = self.nir.Affine(weight=_np(m.weight), bias=self._bias(node, m))
        self.add(node, nir_node, self.src(node))

    def avgpool(self, node: fx.Node, kernel, stride, padding, ceil_mode, count_include_pad, divisor) -> None:
        kernel, stride, padding = _pair(kernel), _pair(stride if stride is not None else kernel), _pair(padding)
        if ceil_mode or divisor is not None or (any(padding) and not count_include_pad):
            self.fail(node, "NIR's AvgPool2d has no ceil_mode, divisor_override or count_include_pad=False")
        nir_node = self.nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                      padding=np.array(padding))
        self.add(node, nir_node, self.src(node))

    def adaptive(self, node: fx.Node) -> None:
        in_shape, out_shape = self.shape(node.args[0]), self.shape(node)
        if len(in_shape) != 3 or any(i % o for i, o in zip(in_shape[1:], out_shape[1:])):
            self.fail(node, f"adaptive average pooling from {in_shape[1:]} to {out_shape[1:]} has windows of "
                            "different sizes; NIR's AvgPool2d needs whole windows")
        kernel = tuple(i // o for i, o in zip(in_shape[1:], out_shape[1:]))
        self.avgpool(node, kernel, kernel, 0, False, True, None)

    def flatten(self, node: fx.Node) -> None:
        in_shape, out_shape = self.shape(node.args[0]), self.shape(node)
        if len(out_shape) != 1 or int(np.prod(in_shape)) != out_shape[0]:
            self.fail(node, f"reshaping {list(in_shape)} to {list(out_shape)}: only flattening every dimension but "
                            "the batch maps to NIR's Flatten")
        nir_node = self.nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
        self.add(node, nir_node, self.src(node))


def export_nir(snn: SpikingModel, path: str | os.PathLike, *, reset: str = "subtract", v0: str = "error",
               dt: float = 1.0):
    """Write ``snn`` as a NIR graph to ``path`` (HDF5, ``nir.write``) and return the ``nir.NIRGraph``.

    :param reset: ``"subtract"`` (default) refuses: NIR's ``IF`` resets to ``v_reset``, not by
        subtraction, so no faithful export exists; ``"zero"`` writes ``v_reset = 0`` (lossy,
        measured in docs/export.md).
    :param v0: ``"error"`` refuses sites with a non-zero initial potential (NIR's ``IF`` has
        none); ``"metadata"`` writes it to the node's ``metadata["v0"]``.
    :param dt: the step (default 1: one unit per step); every ``IF`` gets ``r = 1 / dt``, so a reader that
        integrates ``dt * r * I`` adds the drive once per step (SpikingJelly's ``import_from_nir(graph, dt=dt)``
        checks ``r == 1 / dt``; snnTorch's importer wants ``r == 1``, i.e. ``dt = 1``).

    ``snn`` is folded on a copy first when it is not folded (:func:`snnbridge.fold_scales`);
    ``snn`` itself is never changed. Needs the ``nir`` extra (``pip install 'snnbridge[nir]'``).
    """
    from .runtime import SpikingModel

    if not isinstance(snn, SpikingModel):
        raise InputError(f"export_nir takes the SpikingModel returned by snnbridge.convert, got {type(snn).__name__}.")
    if reset not in RESETS:
        raise InputError(f"export_nir: reset must be one of {', '.join(RESETS)}, got {reset!r}.")
    if v0 not in V0_MODES:
        raise InputError(f"export_nir: v0 must be one of {', '.join(V0_MODES)}, got {v0!r}.")
    if not (isinstance(dt, (int, float)) and not isinstance(dt, bool) and dt > 0):
        raise InputError(f"export_nir: dt must be a positive number of seconds, got {dt!r}.")
    if reset == "subtract":
        raise InputError("export_nir: every snnbridge neuron resets by subtraction (v -= threshold after a spike), "
                         "which rate-coded conversion relies on, but NIR's IF node resets to v_reset and NIR has no "
                         "reset by subtraction, so the SNN cannot be exported faithfully. Pass reset='zero' for an "
                         "explicit lossy export (reset to 0; see docs/export.md for the accuracy it costs).")
    nir = _nir()
    check_exportable(snn)
    folded = snn if is_folded(snn) else fold_scales(snn)
    if folded.input_shape is None:
        raise InputError("export_nir: the SNN does not know its input shape yet; run it once on a batch (snn(x)).")
    param = next(folded.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    with torch.no_grad():
        _ShapeProp(folded.graph_module).run(torch.zeros(1, *folded.input_shape, dtype=dtype,
                                                        device=param.device if param is not None else "cpu"))
    graph = _Builder(folded, nir, v0, dt).build()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(str(path), graph)
    return graph
