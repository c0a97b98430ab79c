"""How a run executes a converted graph: a static prefix once, a temporal body per time chunk, an affine tail.

The converted network's graph has three parts:

* the **prefix**: everything that depends on the input image but on no neuron (the first
  convolution(s) before the first neurons). It is computed once per run, whatever the number
  of chunks;
* the **body**: the neurons and everything downstream of them, run once per time chunk on
  merged ``[n*B, ...]`` tensors;
* the **tail**: the layers after the last neurons (typically the classifier head). When all of
  them are affine (conv, linear, average pooling, flatten, adds, scaling ...), the mean of the
  tail's per-step outputs over the decoded steps equals the tail applied once to the mean of
  its inputs, so :meth:`SpikingModel.forward` runs the tail once (``forward_on_means``).
  The result equals the per-step path up to float rounding; ``run`` and ``sweep`` keep the
  per-step path (they return per-step outputs).

:class:`RunPlan` builds the three ``torch.fx`` graphs from the model's graph; they share
the model's submodules (weights, neurons), so plugins that edit parameters or specs need not
care. A plan is rebuilt when the graph or its submodules change.
"""

from __future__ import annotations

import operator

import torch.nn.functional as F
from torch import fx, nn

from .graph import LINEAR_FUNCTIONS, SAFE_METHODS, SCALAR_FUNCTIONS, SCALAR_METHODS, site_of
from .timeline import TimeExpand

#: modules affine in their (temporal) input, so averaging over steps commutes with them
AFFINE_MODULES: tuple[type, ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad2d, nn.Upsample, TimeExpand,
)
_NOT_AFFINE_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d}
_STRUCTURAL = {operator.getitem, getattr}


def _module_slots(gm: fx.GraphModule) -> list[tuple[dict, str, nn.Module | None]]:
    """(parent's module dict, attribute, module) of every called submodule: a replaced module is seen at once."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            parent, _, leaf = str(n.target).rpartition(".")
            owner = gm.get_submodule(parent) if parent else gm
            out.append((owner._modules, leaf, owner._modules[leaf]))
    return out



def _affine(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), AFFINE_MODULES)
    if node.op == "call_function":
        t = node.target
        return (t in LINEAR_FUNCTIONS or t in SCALAR_FUNCTIONS or t in _STRUCTURAL) and t not in _NOT_AFFINE_FUNCTIONS
    if node.op == "call_method":
        return node.target in SAFE_METHODS or node.target in SCALAR_METHODS
    return node.op in ("get_attr", "output")


def _copy(nodes, env: dict, graph: fx.Graph) -> None:
    for n in nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])


class RunPlan:
    """The prefix / body / tail graphs of one converted graph (see the module docstring).

    ``prefix(x) -> tuple`` of static values; ``body(*static) -> output`` per chunk;
    ``head(*static) -> tuple`` of the tail's temporal inputs per chunk and
    ``tail(*static_for_tail, *means) -> output`` once, when the tail is affine (else None).
    """

    def __init__(self, gm: fx.GraphModule):
        self.code = gm.code
        self.slots = _module_slots(gm)
        self._gm = gm
        self._until: dict[str, fx.GraphModule] = {}
        nodes = list(gm.graph.nodes)
        output = next(n for n in nodes if n.op == "output")
        temporal: set[fx.Node] = set()
        for n in nodes:
            if n.op == "output":
                continue
            is_expand = n.op == "call_module" and isinstance(gm.get_submodule(n.target), TimeExpand)
            if site_of(n) is not None or is_expand or any(d in temporal for d in n.all_input_nodes):
                temporal.add(n)
        static = [n for n in nodes if n not in temporal and n.op != "output"]
        body = [n for n in nodes if n in temporal]
        boundary = [n for n in static if any(u in temporal or u is output for u in n.users)]
        self._body_nodes, self._boundary = body, boundary

        # prefix: the static part, returning the values the body reads
        pg, env = fx.Graph(), dict[fx.Node, fx.Node]()
        _copy(static, env, pg)
        pg.output(tuple(env[b] for b in boundary))
        self.prefix = fx.GraphModule(gm, pg, class_name="SNNPrefix")

        # body: the temporal part, per chunk
        bg, env = fx.Graph(), {}
        for i, b in enumerate(boundary):
            env[b] = bg.placeholder(f"static_{i}")
        _copy(body, env, bg)
        bg.output(fx.node.map_arg(output.args[0], lambda a: env[a]))
        self.body = fx.GraphModule(gm, bg, class_name="SNNBody")

        # tail: temporal nodes downstream of every site (nothing they feed reaches a neuron)
        reaches_site: set[fx.Node] = set()
        for n in reversed(nodes):
            if site_of(n) is not None or any(u in reaches_site for u in n.users):
                reaches_site.add(n)
        tail = [n for n in body if n not in reaches_site]
        self.head = self.tail = None
        self.tail_static: list[int] = []
        if tail and all(_affine(n, gm) for n in tail):
            tail_set = set(tail)
            inputs = []  # temporal values computed before the tail and read by it
            for n in body:
                if n not in tail_set and any(u in tail_set or u is output for u in n.users) and n not in inputs:
                    inputs.append(n)
            hg, env = fx.Graph(), {}
            for i, b in enumerate(boundary):
                env[b] = hg.placeholder(f"static_{i}")
            _copy([n for n in body if n not in tail_set], env, hg)
            hg.output(tuple(env[n] for n in inputs))
            self.head = fx.GraphModule(gm, hg, class_name="SNNHead")
            tg, env = fx.Graph(), {}
            self.tail_static = [i for i, b in enumerate(boundary) if any(u in tail_set or u is output
                                                                        for u in b.users)]
            for i in self.tail_static:
                env[boundary[i]] = tg.placeholder(f"static_{i}")
            for k, n in enumerate(inputs):
                env[n] = tg.placeholder(f"mean_{k}")
            _copy(tail, env, tg)
            tg.output(fx.node.map_arg(output.args[0], lambda a: env[a]))
            self.tail = fx.GraphModule(gm, tg, class_name="SNNTail")

    @property
    def tail_is_affine(self) -> bool:
        return self.tail is not None

    def until(self, site: str) -> fx.GraphModule:
        """The body cut after ``site``: only what that site depends on runs, and the site's output is returned."""
        if site not in self._until:
            target = next(n for n in self._body_nodes if site_of(n) == site)
            needed, stack = set(), [target]
            while stack:
                n = stack.pop()
                if n in needed or n not in self._body_nodes:
                    continue
                needed.add(n)
                stack.extend(n.all_input_nodes)
            g, env = fx.Graph(), {}
            for i, b in enumerate(self._boundary):
                env[b] = g.placeholder(f"static_{i}")
            _copy([n for n in self._body_nodes if n in needed], env, g)
            g.output(env[target])
            self._until[site] = fx.GraphModule(self._gm, g, class_name="SNNUntil")
        return self._until[site]


def current_plan(gm: fx.GraphModule, plan: RunPlan | None) -> RunPlan:
    """``plan`` if it still matches ``gm`` (same code, same submodule objects), else a new one."""
    if plan is not None and plan._gm is gm and plan.code is gm.code and all(
            slots.get(leaf) is module for slots, leaf, module in plan.slots):
        return plan
    return RunPlan(gm)

