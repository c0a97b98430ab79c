"""``snnbridge.energy(snn, x)``: synaptic operations, MACs and energy of a converted SNN, counted from one run.

Everything is counted from what one ``snn(x)`` call actually executes (the run plan of
:mod:`snnbridge.plan`), per sample (the mean over the batch ``x``), and set against the MACs
of the ANN the SNN was converted from (the same layers, one forward pass). Counting rules,
each with its reason:

* **SynOps** (accumulates driven by spikes). A Conv/Linear whose input, on a step, is made
  of spikes does one accumulate per synapse each incoming spike drives: the *fan-out* of the
  spike's position, ``out_channels x`` the kernel positions that cover it for a convolution
  (stride, padding, padding mode, dilation and groups respected, so border positions drive
  fewer synapses). The fan-out of every input position is computed exactly, as the gradient
  of ``sum(conv(ones, ones_like(weight)))``, and multiplied with the spikes that reached the
  layer, counted per position and step during the run. Spikes weighted by thresholds
  (``theta * s``, what every snnbridge site passes on) are spikes: an event is any nonzero
  input, whatever its value (SpikingJelly's ``op_counter`` counts only exact 0/1 tensors and
  reports 0 SynOps on converted models). Output masks of per-sample corrections remove the
  spikes they mask (those never reach the layer).
* What **keeps spikes spikes** between the neurons and the next layer: reshapes (flatten,
  view, ...), concatenation, zero padding and max pooling (the max of ``theta * s`` over a
  window of one site is ``theta * OR(s)``, a spike; the comparisons of a max-pool are not
  counted). Average pooling, a kept BatchNorm, a scaling or the sum of two spike maps make
  the values graded (``0.25 theta``, ``theta_1 + theta_2``): the next layer then does
  **MACs** on analog values, counted dense, on every step. (An event-driven chip could fold a
  sum-pool into the next layer's weights; we count what a network written this way runs.
  The example CIFAR-10 CNN pools *before* its neurons, ``conv -> BN -> avgpool -> relu``, so
  its layers receive spikes.)
* **MACs the SNN still does**, dense (every input position, zeros included, as the ANN count):
  layers on the analog input, the layers after the last neurons, layers on graded values.
  The layers before the first neurons (the static prefix) run **once per run** on a static
  input, and on every step with ``time_major=True`` (one input per step). The layers after
  the last neurons (the tail, typically the classifier) run **once**, on the mean of their
  inputs, when ``snn.forward_on_means`` holds and the tail is affine (what ``snn(x)`` does;
  set ``snn.forward_on_means = False`` to count a per-step head on spikes, as a chip runs
  it); otherwise on every step, like every other layer.
* **Adds**, priced as accumulates: a layer's bias on every step it runs (the ANN adds it
  once), residual adds of two signals (per element and step), a neuron's per-step input bias
  (``NeuronSpec.step_bias``). **Neuron updates**: one per neuron per simulated step (the
  charge, compare and reset of an IF neuron), plus the steps of a site's own look-ahead
  pre-simulation. Every simulated step is counted, the uncounted warm-up and the steps a
  decoding delay skips included: the hardware runs them.
* Not counted, in the SNN nor the ANN: pooling, flatten, elementwise ops with constants
  (input normalisation), ReLU. Layers called as functions (``F.conv2d(x, self.w)``) cannot
  be hooked: they are listed under ``"uncounted"``, never silently left out.
* **ANN MACs**: dense, per Conv/Linear (``out_elements x in_channels/groups x kernel`` and
  ``out_features x in_features``), one per element for a kept BatchNorm, plus its bias and
  residual adds, from the layer shapes of the same input.

Energy: ``E_SNN = E_AC (SynOps + adds) + E_MAC MACs + E_neuron updates`` and
``E_ANN = E_MAC MACs_ANN + E_AC adds_ANN``, in pJ per sample. The presets take the 45 nm,
0.9 V figures of M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014 (:data:`HOROWITZ_45NM`), with ``MAC = multiply + add`` and ``AC = add`` at one
precision, and a neuron update priced as one add: ``fp32_45nm`` (4.6 pJ MAC, 0.9 pJ AC,
the figures of the SNN literature, e.g. SpikingJelly's ``estimate_simple_energy``),
``fp16_45nm`` (1.5 / 0.4) and ``int8_45nm`` (0.23 / 0.03). Memory traffic, which often
dominates on real chips, is not modelled. See ``docs/energy.md``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import InputError, OptionError, UnsupportedModelError, did_you_mean
from .graph import input_dependent, site_of
from .runtime import SpikingModel, SpikingSite
from .timeline import TimeExpand

#: pJ per operation at 45 nm, 0.9 V (Horowitz, ISSCC 2014, Fig. 1.1.9): the table the presets are built from
HOROWITZ_45NM: dict[str, dict[str, float]] = {
    "int8": {"add": 0.03, "mult": 0.2},
    "int32": {"add": 0.1, "mult": 3.1},
    "fp16": {"add": 0.4, "mult": 1.1},
    "fp32": {"add": 0.9, "mult": 3.7},
}

#: energy per operation in pJ: MAC = mult + add, AC = add, neuron update = one add (of the same precision)
COST_PRESETS: dict[str, dict[str, float]] = {
    "fp32_45nm": {"mac": 4.6, "ac": 0.9, "neuron": 0.9},
    "fp16_45nm": {"mac": 1.5, "ac": 0.4, "neuron": 0.4},
    "int8_45nm": {"mac": 0.23, "ac": 0.03, "neuron": 0.03},
}
COST_KEYS = ("mac", "ac", "neuron")

SPIKES, ANALOG = "spikes", "analog"
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: operations after which spikes are still spikes (values moved or selected, never mixed)
_CARRY_MODULES = (nn.Flatten, nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.ZeroPad2d, TimeExpand)
_CARRY_FUNCTIONS = {torch.flatten, torch.reshape, operator.getitem, torch.cat, torch.concat, F.max_pool1d,
                    F.max_pool2d, F.max_pool3d, torch.transpose, torch.permute, torch.unsqueeze, torch.squeeze,
                    torch.chunk, torch.split}
_CARRY_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "unsqueeze", "squeeze", "chunk",
                  "split", "view_as", "reshape_as", "float", "to", "type_as", "detach", "clone", "unflatten",
                  "expand_as"}
_SHAPE_ONLY = {"size", "dim"}
_ADD_FUNCTIONS = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd, operator.isub}
_ADD_METHODS = {"add", "sub", "add_", "sub_"}
_UNHOOKABLE = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
               torch.matmul, operator.matmul, torch.mm, torch.bmm, torch.einsum}


def resolve_costs(costs: str | Mapping[str, Any]) -> dict[str, Any]:
    """The per-operation energies (pJ) for a preset name or a ``{"mac", "ac", "neuron"}`` dict.

    A dict needs ``mac`` and ``ac``; ``neuron`` defaults to ``ac`` (one add per update).
    Unknown presets or keys and negative or non-finite values raise :class:`OptionError`.
    """
    if isinstance(costs, str):
        if costs not in COST_PRESETS:
            raise OptionError(f"unknown energy preset {costs!r}.{did_you_mean(costs, COST_PRESETS)} Presets: "
                              f"{', '.join(COST_PRESETS)}; or pass a dict such as {{'mac': 4.6, 'ac': 0.9, "
                              "'neuron': 0.9}} (pJ per operation).")
        return {"preset": costs, **COST_PRESETS[costs]}
    if not isinstance(costs, Mapping):
        raise OptionError(f"costs must be a preset name ({', '.join(COST_PRESETS)}) or a dict of pJ per operation "
                          f"with keys {', '.join(COST_KEYS)}; got {type(costs).__name__}.")
    bad = [k for k in costs if k not in COST_KEYS]
    if bad:
        raise OptionError(f"unknown energy cost {bad[0]!r}.{did_you_mean(str(bad[0]), COST_KEYS)} The keys are "
                          f"{', '.join(COST_KEYS)} (pJ per MAC, per accumulate, per neuron update).")
    missing = [k for k in ("mac", "ac") if k not in costs]
    if missing:
        raise OptionError(f"the energy costs lack {' and '.join(missing)}; give pJ per MAC ('mac') and per "
                          "accumulate ('ac'), e.g. {'mac': 4.6, 'ac': 0.9} ('neuron' defaults to 'ac').")
    out: dict[str, Any] = {"preset": "custom"}
    for k in COST_KEYS:
        v = costs.get(k, costs["ac"])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise OptionError(f"energy cost {k!r} must be a finite number >= 0 (pJ per operation), got {v!r}.")
        out[k] = float(v)
    return out


# -- the graph: what each value is, where each node runs ------------------------------------------------------


def _carries(node: fx.Node, gm: fx.GraphModule) -> bool:
    """True when ``node`` passes spikes on as spikes (moves or selects values, never mixes them)."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return isinstance(m, _CARRY_MODULES) or (isinstance(m, nn.ConstantPad2d) and m.value == 0)
    if node.op == "call_function":
        if node.target is F.pad:
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
            return bool(mode == "constant" and not value)
        return node.target in _CARRY_FUNCTIONS
    return node.op == "call_method" and node.target in _CARRY_METHODS


def _value_kinds(gm: fx.GraphModule) -> dict[fx.Node, str | None]:
    """node -> "spikes", "analog", or None for constants and non-tensor values (sizes)."""
    signals = input_dependent(gm)
    kinds: dict[fx.Node, str | None] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            kinds[node] = ANALOG
        elif node.op in ("get_attr", "output") or node not in signals:
            kinds[node] = None
        elif site_of(node) is not None:
            kinds[node] = SPIKES
        elif (node.op == "call_method" and node.target in _SHAPE_ONLY) or (
                node.op == "call_function" and node.target is getattr):
            kinds[node] = None
        else:
            ins = [kinds[a] for a in node.all_input_nodes if kinds.get(a) is not None]
            if not ins:
                kinds[node] = None  # computed from sizes only (x.shape[0] ...)
            else:
                kinds[node] = SPIKES if all(k == SPIKES for k in ins) and _carries(node, gm) else ANALOG
    return kinds


def _phases(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """node -> "prefix" (before any neurons), "tail" (after the last neurons) or "body" (as :mod:`snnbridge.plan`)."""
    nodes = list(gm.graph.nodes)
    temporal: set[fx.Node] = set()
    for n in nodes:
        if n.op == "output":
            continue
        expand = n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), TimeExpand)
        if site_of(n) is not None or expand or any(d in temporal for d in n.all_input_nodes):
            temporal.add(n)
    reaches: set[fx.Node] = set()
    for n in reversed(nodes):
        if site_of(n) is not None or any(u in reaches for u in n.users):
            reaches.add(n)
    return {n: ("prefix" if n not in temporal else "body" if n in reaches else "tail") for n in nodes}


class _Shapes(fx.Interpreter):
    """One sample through the SNN's graph with the neurons and time broadcasts as identities: per-sample shapes."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.inputs: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_module":
            first = n.args[0] if n.args else None
            value = self.env.get(first) if isinstance(first, fx.Node) else None
            if isinstance(value, torch.Tensor):
                self.inputs[n] = tuple(value.shape[1:])
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape[1:])
        return out

    def call_module(self, target, args, kwargs):
        if isinstance(self.fetch_attr(str(target)), (SpikingSite, TimeExpand)):
            return args[0]
        return super().call_module(target, args, kwargs)


def _dense(m: nn.Module, out_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, bias adds) of one dense call of a Conv/Linear/BatchNorm for one sample."""
    out = math.prod(out_shape)
    if isinstance(m, nn.Linear):
        return out * m.in_features, out if m.bias is not None else 0
    if isinstance(m, _NORMS):
        return out, 0
    conv: Any = m
    return out * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size), out if conv.bias is not None else 0


def _fanout(m: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Synapses each input position of ``m`` drives (flattened, float64): exact at borders, strides and groups."""
    if isinstance(m, nn.Linear):
        return torch.full((math.prod(in_shape),), float(m.out_features), dtype=torch.float64)
    conv: Any = m
    with torch.enable_grad():
        x = torch.ones(1, *in_shape, dtype=torch.float64, requires_grad=True)
        w = torch.ones(conv.weight.shape, dtype=torch.float64)
        conv._conv_forward(x, w, None).sum().backward()
    assert x.grad is not None
    return x.grad[0].flatten()


# -- counting during the run ------------------------------------------------------------------------------------


class _SpikeHook:
    """Counts the spikes reaching one layer, per step, and the accumulates they drive."""

    def __init__(self, module: nn.Module, state, batch: int, steps: int):
        self.module, self.state, self.batch = module, state, batch
        self.synops = torch.zeros(steps, dtype=torch.float64)
        self.events = torch.zeros(steps, dtype=torch.float64)
        self._fanouts: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, module, args, output) -> None:
        x = args[0]
        n = x.shape[0] // self.batch
        shape = tuple(x.shape[1:])
        if shape not in self._fanouts:
            self._fanouts[shape] = _fanout(module, shape).to(x.device)
        counts = (x.detach() != 0).reshape(n, self.batch, -1).sum(1, dtype=torch.float64)  # [n, positions]
        t0 = self.state.t0
        self.synops[t0:t0 + n] += (counts @ self._fanouts[shape]).cpu()
        self.events[t0:t0 + n] += counts.sum(1).cpu()


class _SiteCounter:
    """A recording (the runtime's protocol, :mod:`snnbridge.recording`) that counts spikes and neurons per step."""

    wants_v = False
    sees_padding = True  # a run shorter than the look-ahead simulates more steps than it returns: they cost too

    def __init__(self, names: list[str], steps: int):
        self.spikes = {n: torch.zeros(steps, dtype=torch.float64) for n in names}
        self.neurons: dict[str, int] = {}
        self._cursor = dict.fromkeys(names, 0)

    def begin_run(self, warmup: int) -> None:
        pass

    def capture(self, site, drive, result, output, counted, v_start=None) -> None:
        name = site.name
        if name not in self.spikes:
            return
        n = drive.shape[0]
        self.neurons[name] = math.prod(drive.shape[2:])
        t = self._cursor[name]
        self.spikes[name][t:t + n] += result.spikes.detach().reshape(n, -1).sum(1, dtype=torch.float64).cpu()
        self._cursor[name] = t + n

    def end_run(self) -> None:
        pass


# -- the estimate -------------------------------------------------------------------------------------------


def _entry(name: str, kind: str, costs: dict, steps: int, per_step: bool, *, feeds: str | None = None,
           runs: str | None = None, synops=None, macs=None, adds=None, updates=None, spikes=None,
           ann_macs: float = 0.0, ann_adds: float = 0.0, batch: int = 1, extra: dict | None = None) -> dict:
    """One layer's counts (per-step float64 vectors summed over the batch) as a plain per-sample dict."""
    zero = torch.zeros(steps, dtype=torch.float64)
    seq = {k: (v if v is not None else zero) / batch for k, v in
           (("synops", synops), ("macs", macs), ("adds", adds), ("neuron_updates", updates), ("spikes", spikes))}
    seq["energy_pj"] = (costs["ac"] * (seq["synops"] + seq["adds"]) + costs["mac"] * seq["macs"]
                        + costs["neuron"] * seq["neuron_updates"])
    out: dict[str, Any] = {"name": name, "kind": kind}
    if feeds is not None:
        out["input"] = feeds
    if runs is not None:
        out["runs"] = runs
    out.update({k: float(v.sum()) for k, v in seq.items() if k not in ("energy_pj",)})
    out["ann_macs"], out["ann_adds"] = float(ann_macs), float(ann_adds)
    out["energy_pj"] = float(seq["energy_pj"].sum())
    out["ann_energy_pj"] = costs["mac"] * float(ann_macs) + costs["ac"] * float(ann_adds)
    out.update(extra or {})
    if per_step:
        out["per_step"] = {k: [float(a) for a in v] for k, v in seq.items()}
    out["_seq"] = seq
    return out


@torch.no_grad()
def energy(snn: SpikingModel, x: torch.Tensor, timesteps: int | None = None, *, costs: str | Mapping = "fp32_45nm",
           per_step: bool = False, time_major: bool = False) -> dict:
    """SynOps, MACs, neuron updates and energy of one run of ``snn`` on ``x``, per sample, next to the ANN's MACs.

    The counting rules are in the module docstring (:mod:`snnbridge.energy`). ``timesteps``:
    counted T (default ``snn.timesteps``); ``costs``: a preset of :data:`COST_PRESETS`
    (``"fp32_45nm"``, ``"fp16_45nm"``, ``"int8_45nm"``) or ``{"mac": pJ, "ac": pJ, "neuron": pJ}``;
    ``per_step``: add ``"per_step"`` lists (one value per simulated step, warm-up first, costs
    paid once per run in the first step, so a running sum gives the cost of a shorter run of
    a T-independent recipe); ``time_major``: ``x`` is a ``[T, B, ...]`` sequence.

    Returns a JSON-ready dict: ``"total"`` (``synops``, ``macs``, ``adds``, ``neuron_updates``,
    ``spikes``, ``firing_rate``, ``ann_macs``, ``ann_adds``, ``energy_pj``, ``ann_energy_pj``,
    ``ratio`` = energy_pj / ann_energy_pj, ``synops_per_ann_mac``), ``"layers"`` (in network
    order: every Conv/Linear and kept BatchNorm with its ``input`` (``"spikes"`` or
    ``"analog"``) and ``runs`` (``"once"`` or ``"every step"``), every residual add, and every
    site's neurons (kind ``"neurons"``)), ``"uncounted"`` (layers called as functions),
    ``"notes"``, ``"timesteps"``, ``"steps_run"``, ``"warmup"``, ``"batch"``, ``"backend"`` and
    ``"costs"`` (the per-operation energies used, pJ).
    """
    if not isinstance(snn, SpikingModel):
        raise InputError(f"snnbridge.energy takes a converted model (what snnbridge.convert or snnbridge.load "
                         f"return), got {type(snn).__name__}.")
    cost = resolve_costs(costs)
    x = snn._check_input(x, time_major)
    batch = int(x.shape[1] if time_major else x.shape[0])
    if time_major:
        if timesteps is not None and int(timesteps) != x.shape[0]:
            raise InputError(f"a [T, B, ...] sequence of {x.shape[0]} steps was given with timesteps={timesteps}; "
                             "the sequence sets T: leave timesteps out, or slice the sequence.")
        T = int(x.shape[0])
    else:
        if timesteps is not None and (isinstance(timesteps, bool) or not isinstance(timesteps, int)
                                      or timesteps < 1):
            raise InputError(f"timesteps must be a positive whole number (e.g. 32), got {timesteps!r}.")
        T = snn.timesteps if timesteps is None else int(timesteps)
    warmup = snn.warmup
    padded = snn.padded_steps(T)  # T < a look-ahead simulates the look-ahead's length (a sequence: refused)
    steps = warmup + padded
    gm = snn.graph_module
    kinds, phases = _value_kinds(gm), _phases(gm)
    tail_once = snn.forward_on_means and snn.plan.tail_is_affine and not time_major
    prefix_once = not time_major

    shapes = _Shapes(gm)
    shapes.run(x[0, :1] if time_major else x[:1])

    def schedule(node: fx.Node) -> str:
        ph = phases[node]
        return "once" if (ph == "prefix" and prefix_once) or (ph == "tail" and tail_once) else "every step"

    # which nodes cost what
    layer_nodes: list[fx.Node] = []
    add_nodes: list[fx.Node] = []
    uncounted: list[dict[str, str]] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, _LAYERS + _NORMS):
                layer_nodes.append(node)
        elif node.op in ("call_function", "call_method") and kinds.get(node) is not None:
            if node.target in _UNHOOKABLE:
                uncounted.append({"name": node.name, "op": getattr(node.target, "__name__", str(node.target)),
                                  "why": "a layer called as a function (weights not in a module) cannot be hooked; "
                                         "counted neither for the SNN nor the ANN: make it an nn.Module"})
            elif node.target in _ADD_FUNCTIONS or node.target in _ADD_METHODS:
                if sum(1 for a in node.args if isinstance(a, fx.Node) and kinds.get(a) is not None) >= 2:
                    add_nodes.append(node)

    def fed_by_spikes(node: fx.Node) -> bool:
        m = gm.get_submodule(str(node.target))
        src = node.args[0]
        return (isinstance(m, _LAYERS) and isinstance(src, fx.Node) and kinds.get(src) == SPIKES
                and schedule(node) == "every step")

    by_module: dict[str, list[fx.Node]] = {}
    for node in layer_nodes:
        by_module.setdefault(str(node.target), []).append(node)
    hooks: dict[str, _SpikeHook] = {}
    for target, nodes in by_module.items():
        fed = [fed_by_spikes(n) for n in nodes]
        if any(fed) and not all(fed):
            raise UnsupportedModelError(
                f"the module {target!r} is called {len(nodes)} times, on spikes and on analog values; energy counts a "
                "module's calls with one hook and cannot tell them apart. Give each call its own module.")
        if all(fed):
            hooks[target] = _SpikeHook(gm.get_submodule(target), snn._state, batch, steps)

    counter = _SiteCounter(list(snn.sites), steps)
    handles = [gm.get_submodule(t).register_forward_hook(h) for t, h in hooks.items()]
    recordings = snn._state.recordings
    recordings.append(counter)
    try:
        snn(x, timesteps, time_major=time_major)
    finally:
        for h in handles:
            h.remove()
        if counter in recordings:
            recordings.remove(counter)

    def steps_vector(node: fx.Node, per_call: float) -> torch.Tensor:
        v = torch.zeros(steps, dtype=torch.float64)
        if schedule(node) == "once":
            v[0] = per_call
        else:
            v[:] = per_call
        return v * batch  # entries divide by the batch

    entries: list[tuple[int, dict]] = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    done: set[str] = set()
    for node in layer_nodes:
        target = str(node.target)
        m = gm.get_submodule(target)
        if target in hooks:
            if target in done:
                continue
            done.add(target)
            group = by_module[target]
            ann = [_dense(m, shapes.shapes[n]) for n in group]
            adds = sum(steps_vector(n, _dense(m, shapes.shapes[n])[1]) for n in group)
            hook = hooks[target]
            extra = {"calls": len(group)} if len(group) > 1 else None
            entries.append((order[node], _entry(target, type(m).__name__, cost, steps, per_step, feeds=SPIKES,
                                                runs="every step", synops=hook.synops, adds=adds,
                                                ann_macs=sum(a[0] for a in ann), ann_adds=sum(a[1] for a in ann),
                                                batch=batch, extra=extra)))
            continue
        dense_macs, bias = _dense(m, shapes.shapes[node])
        runs = schedule(node)
        src = node.args[0]
        feeds = SPIKES if (isinstance(src, fx.Node) and kinds.get(src) == SPIKES and runs == "every step") else ANALOG
        name = target if len(by_module[target]) == 1 else f"{target} ({node.name})"
        entries.append((order[node], _entry(name, type(m).__name__, cost, steps, per_step, feeds=feeds, runs=runs,
                                            macs=steps_vector(node, dense_macs), adds=steps_vector(node, bias),
                                            ann_macs=dense_macs, ann_adds=bias, batch=batch)))
    for node in add_nodes:
        count = math.prod(shapes.shapes[node])
        entries.append((order[node], _entry(node.name, "add", cost, steps, per_step, runs=schedule(node),
                                            adds=steps_vector(node, count), ann_adds=count, batch=batch)))
    for name, site in snn.sites.items():
        node = next(n for n in gm.graph.nodes if site_of(n) == name)
        neurons = counter.neurons.get(name, math.prod(shapes.shapes[node]))
        updates = torch.full((steps,), float(neurons * batch), dtype=torch.float64)
        updates[0] += site.lookahead * neurons * batch  # the site's own look-ahead pre-simulation
        bias_adds = updates.clone() if site.spec.step_bias is not None else None
        spikes = counter.spikes[name]
        entries.append((order[node], _entry(name, "neurons", cost, steps, per_step, runs="every step",
                                            updates=updates, spikes=spikes, adds=bias_adds, batch=batch,
                                            extra={"neurons": int(neurons),
                                                   "firing_rate": float(spikes.sum()) / (neurons * batch * steps)})))
    layers = [e for _, e in sorted(entries, key=lambda p: p[0])]

    keys = ("synops", "macs", "adds", "neuron_updates", "spikes", "energy_pj")
    total_seq = {k: sum((e["_seq"][k] for e in layers), torch.zeros(steps, dtype=torch.float64)) for k in keys}
    for e in layers:
        del e["_seq"]
    total: dict[str, Any] = {k: float(v.sum()) for k, v in total_seq.items()}
    total["ann_macs"] = sum(e["ann_macs"] for e in layers)
    total["ann_adds"] = sum(e["ann_adds"] for e in layers)
    total["ann_energy_pj"] = sum(e["ann_energy_pj"] for e in layers)
    neurons_total = sum(e.get("neurons", 0) for e in layers)
    total["firing_rate"] = total["spikes"] / (neurons_total * steps) if neurons_total else 0.0
    total["ratio"] = total["energy_pj"] / total["ann_energy_pj"] if total["ann_energy_pj"] > 0 else None
    total["synops_per_ann_mac"] = total["synops"] / total["ann_macs"] if total["ann_macs"] > 0 else None
    total = {k: total[k] for k in ("synops", "macs", "adds", "neuron_updates", "spikes", "firing_rate", "ann_macs",
                                   "ann_adds", "energy_pj", "ann_energy_pj", "ratio", "synops_per_ann_mac")}
    if per_step:
        total["per_step"] = {k: [float(a) for a in v] for k, v in total_seq.items()}

    notes: list[str] = []
    if tail_once and any(phases[n] == "tail" for n in layer_nodes):
        notes.append("the layers after the last neurons ran once, on the mean of their inputs over the decoded steps "
                     "(snn.forward_on_means); set snn.forward_on_means = False to count them per step")
    if prefix_once and any(phases[n] == "prefix" for n in layer_nodes):
        notes.append("the layers before the first neurons ran once on the static input")
    if warmup:
        notes.append(f"{warmup} uncounted warm-up step(s) are simulated and counted here")
    if padded > T:
        notes.append(f"T = {T} is shorter than the sites' {padded}-step look-ahead: {padded} steps are simulated "
                     f"(the first {T} returned; snn.padded_steps) and counted here")
    return {"timesteps": T, "warmup": warmup, "steps_run": snn.steps_for(T), "batch": batch,
            "backend": snn.backend_name, "costs": cost, "total": total, "layers": layers, "uncounted": uncounted,
            "notes": notes}
