"""The runtime: a converted network that runs T steps in multi-step form.

Layout. Stateless layers (conv, linear, pooling, add, cat ...) run once per call on a
merged ``[n*B, ...]`` tensor that holds ``n`` time steps of a batch of ``B``; only the
neurons (:class:`SpikingSite`) unmerge to ``[n, B, ...]`` and loop over time (or run a
framework's fused kernel). The part of the network before the first neurons sees the
static input once (``[B, ...]``) and is broadcast over time where it meets temporal
values, so the SNN costs about T times the ANN, not more.

Long runs are processed in chunks of time steps (``time_chunk``) to bound memory: the
neurons keep their membrane potential between chunks, so the result is identical to one
long pass. Every run starts from the specs' initial state: the model resets itself.

Decoding. The output of the last (analog) layer is collected per step; ``forward``
returns its mean over the counted steps, ``sweep`` the running mean after each step
(accuracy vs T from one run). Steps a plugin asks for as pre-simulation (``warmup``) are
run first and never counted; both numbers are reported (``steps_run``).

Per-sample corrections (generic; the methods live in plugins). A plugin's
``snnbridge_correct_error`` may attach :class:`SiteCorrection` objects to sites. Each asks
for a pre-simulation of ``presim_steps`` steps, either

* ``scope="network"``: the whole network runs that many uncounted warm-up steps first
  (``SpikingModel.warmup``); at the boundary every site hands its warm-up record to its
  corrections and restarts from the state they return, with their output masks; or
* ``scope="layer"``: each site pre-simulates the first steps of its *own* counted input
  sequence (a look-ahead), asks its corrections for a new initial state, and then runs the
  whole counted sequence from it.

When any correction of a model is network-scoped, all of them share the network warm-up
(one pre-simulation serves every correction). Corrections at a site are applied in the
order they were attached (recipe order); each sees the state proposed by the previous.

Decoding window. ``decode_delay(T)`` (default 0) skips the first counted steps when
averaging the output ("delayed evaluation"); ``sweep`` applies it for every prefix length.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

from .errors import BackendError, InputError
from .graph import PreparedGraph, site_attr
from .neurons import NeuronLayer, SimResult
from .options import resolve_options
from .sites import SiteInfo
from .spec import NeuronSpec

#: elements of one merged activation tensor per chunk (auto chunking), ~128 MB of float32
CHUNK_ELEMENTS = 1 << 25


@dataclass
class PresimRecord:
    """What a site saw during its pre-simulation (all ``[P, B, ...]`` except ``v0``).

    ``drive``: input incl. per-step bias; ``spikes``: 0/1; ``v_seq``: membrane after each
    step's reset; ``v0``: the state the pre-simulation started from; ``threshold``: the
    threshold broadcastable against a ``[B, ...]`` state.
    """

    drive: torch.Tensor
    spikes: torch.Tensor
    v_seq: torch.Tensor
    v0: torch.Tensor
    threshold: torch.Tensor | float

    @property
    def pre_reset(self) -> torch.Tensor:
        """The membrane before each step's reset, ``m(t) = v(t) + threshold * s(t)``."""
        return self.v_seq + self.spikes * self.threshold


@dataclass
class Adjustment:
    """A correction's answer: the initial state of the counted run and/or an output mask (both ``[B, ...]``)."""

    v0: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class SiteCorrection:
    """Base class of per-sample runtime corrections attached to a :class:`SpikingSite`.

    Subclasses set ``presim_steps`` and ``scope`` (``"layer"`` or ``"network"``) and
    implement :meth:`adjust`. ``v0`` passed to ``adjust`` is the state proposed so far for
    the counted run (the spec's initial state, or what earlier corrections returned).
    """

    presim_steps: int = 0
    scope: str = "layer"

    def adjust(self, site: "SpikingSite", record: PresimRecord, v0: torch.Tensor) -> Adjustment:
        raise NotImplementedError


class _RunState:
    """Shared by the modules of one model during a run: steps in this chunk, first step, batch."""

    def __init__(self):
        self.n = 1
        self.t0 = 0
        self.batch = 0
        self.warmup = 0  # network-wide uncounted steps of the current run


def biased_sequence(spec: NeuronSpec, x_seq: torch.Tensor, t0: int) -> torch.Tensor:
    """``x_seq`` (``[n, B, C, ...]``) plus the spec's per-step bias for absolute steps ``t0 .. t0+n-1``."""
    b = spec.step_bias
    if b is None:
        return x_seq
    if isinstance(b, float):
        return x_seq + b
    n = x_seq.shape[0]
    if b.shape[0] < t0 + n:
        raise InputError(f"the neuron's per-step bias table has {b.shape[0]} steps but step {t0 + n} was run; it was "
                         "calibrated for a shorter run. Re-run the correction (convert again) for this T.")
    rows = b[t0:t0 + n].to(device=x_seq.device, dtype=x_seq.dtype)
    shape = [n] + [1] * (x_seq.dim() - 1)
    if rows.dim() == 2:
        if x_seq.dim() < 3 or x_seq.shape[2] != rows.shape[1]:
            raise InputError(f"a per-step, per-channel bias of {rows.shape[1]} channels does not fit activations "
                             f"shaped {tuple(x_seq.shape[1:])}.")
        shape[2] = rows.shape[1]
    return x_seq + rows.view(shape)


class NeuronFactory:
    """Builds a site's neurons with one backend adapter: ``factory(spec) -> NeuronLayer``.

    Picklable (a saved SNN keeps it to rebuild neurons after ``set_spec``): only the backend
    name and its options are stored; the plugin registry is looked up again after loading.
    """

    def __init__(self, backend: str, options: dict, registry=None):
        self.backend = backend
        self.options = dict(options)
        self._registry = registry

    def __getstate__(self):
        return {"backend": self.backend, "options": self.options, "_registry": None}

    def __call__(self, spec: NeuronSpec) -> NeuronLayer:
        from .plugin_manager import get_registry

        registry = self._registry or get_registry()
        layer = registry.call(self.backend, "snnbridge_make_neuron", spec=spec, options=self.options)
        if not isinstance(layer, NeuronLayer):
            raise BackendError(f"backend {self.backend!r} returned {type(layer).__name__} from "
                               "snnbridge_make_neuron; adapters must return a snnbridge.NeuronLayer.")
        return layer


def make_neuron_factory(backend: str, backend_options: dict | None = None, registry=None) -> NeuronFactory:
    """Validate ``backend`` and its options; return the :class:`NeuronFactory` of that adapter."""
    from .plugin_manager import get_registry

    registry = registry or get_registry()
    registry.require(backend, kind="backend")
    if registry.info(backend).kind != "backend":
        raise BackendError(f"{backend!r} is a method plugin, not a neuron backend; choose one of "
                           f"{', '.join(registry.names('backend'))}.")
    options = resolve_options(backend, registry.options(backend), backend_options)
    return NeuronFactory(backend, options, registry)


class TimeExpand(nn.Module):
    """Broadcast a static ``[B, ...]`` tensor to the merged ``[n*B, ...]`` layout of the current chunk."""

    def __init__(self, state: _RunState):
        super().__init__()
        self._state = state

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return x
        n = self._state.n
        return x.unsqueeze(0).expand(n, *x.shape).reshape(n * x.shape[0], *x.shape[1:])


class SpikingSite(nn.Module):
    """One activation site's neurons in the converted network.

    Holds the site's :class:`NeuronSpec`, the backend's :class:`NeuronLayer` (genuine
    framework neurons), and the membrane state between time chunks. Outputs weighted
    spikes ``threshold * s(t)`` in the merged layout.
    """

    def __init__(self, info: SiteInfo, spec: NeuronSpec, neuron: NeuronLayer, state: _RunState):
        super().__init__()
        self.info = info
        self.spec = spec
        self.neuron = neuron
        self.static_input = False
        self._state = state
        self.v: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._presim: list[tuple] = []
        #: callables ``(site, drive, result)`` called after each simulated part (used to record)
        self.recorders: list[Callable[["SpikingSite", torch.Tensor, SimResult], None]] = []
        #: callables ``(site, x_seq, v0) -> v0`` that set a run's initial state per sample
        self.initializers: list[Callable[["SpikingSite", torch.Tensor, torch.Tensor], torch.Tensor]] = []
        #: per-sample corrections fed by a pre-simulation (see the module docstring)
        self.corrections: list[SiteCorrection] = []

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def lookahead(self) -> int:
        """Steps of this site's own look-ahead pre-simulation (0 when the network warm-up is used)."""
        if self._state.warmup > 0 or not self.corrections:
            return 0
        return max(c.presim_steps for c in self.corrections)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Unmerge ``x`` to ``[n, B, ...]`` (broadcasting a static input over time)."""
        n, b = self._state.n, self._state.batch
        if self.static_input:
            return x.unsqueeze(0).expand(n, *x.shape)
        return x.view(n, b, *x.shape[1:])

    def initial_state(self, like: torch.Tensor) -> torch.Tensor:
        """The state a run (or the counted part after a pre-simulation) starts from."""
        v = self.spec.v0_tensor(like)
        for init in self.initializers:
            v = init(self, like, v)
        return v

    def _threshold(self, like: torch.Tensor):
        th = self.spec.threshold
        return th if isinstance(th, float) else self.spec.threshold_tensor(like, 1)

    def _correct(self, record: PresimRecord) -> None:
        v0 = self.initial_state(record.v0)
        mask = None
        for c in self.corrections:
            adj = c.adjust(self, record, v0)
            if adj is None:
                continue
            if adj.v0 is not None:
                v0 = adj.v0
            if adj.mask is not None:
                mask = adj.mask if mask is None else mask * adj.mask
        self.v, self.mask = v0, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_seq = self.sequence(x)
        t0, W = self._state.t0, self._state.warmup
        if t0 == 0 or self.v is None:
            self.v = self.initial_state(x_seq[0])
            self.mask, self._presim = None, []
        if t0 < W < t0 + x_seq.shape[0]:
            split = W - t0
            out = torch.cat([self._run(x_seq[:split], t0), self._run(x_seq[split:], W)], 0)
        else:
            out = self._run(x_seq, t0)
        return out.reshape(-1, *out.shape[2:])

    def _run(self, seq: torch.Tensor, start: int) -> torch.Tensor:
        W = self._state.warmup
        if self.corrections and W > 0 and start == W:
            drive, spikes, v_seq = (torch.cat([p[i] for p in self._presim], 0) for i in range(3))
            self._correct(PresimRecord(drive, spikes, v_seq, self._presim[0][3], self._threshold(spikes[0])))
            self._presim = []
        look = self.lookahead
        if look and start == 0:
            if seq.shape[0] < look:
                raise InputError(f"site {self.name!r} pre-simulates the first {look} steps of its input, but only "
                                 f"{seq.shape[0]} step(s) are run; use timesteps >= {look}.")
            drive = biased_sequence(self.spec, seq[:look], 0)
            res = self.neuron.simulate(drive, self.v.clone(), return_v=True)
            self._correct(PresimRecord(drive, res.spikes, res.v_seq, self.v, self._threshold(res.spikes[0])))
        in_presim = start < W
        drive = biased_sequence(self.spec, seq, start if in_presim else start - W)
        keep = in_presim and bool(self.corrections)
        v_start = self.v
        result = self.neuron.simulate(drive, self.v, return_v=bool(self.recorders) or keep)
        if keep:
            self._presim.append((drive, result.spikes, result.v_seq, v_start))
        self.v = result.v_last
        for rec in self.recorders:
            rec(self, drive, result)
        th = self.spec.threshold
        out = result.spikes * (th if isinstance(th, float) else self.spec.threshold_tensor(result.spikes, 2))
        if self.mask is not None and not in_presim:
            out = out * self.mask
        return out

    def clear_state(self) -> None:
        """Forget the membrane state (the next run starts from the spec's initial state).

        Not called ``reset``: SpikingJelly's ``reset_net`` calls ``reset()`` on every module
        that has one (and warns for non-SpikingJelly modules); the genuine neurons inside
        the backend layer are what it should reset.
        """
        self.v, self.mask, self._presim = None, None, []

    def extra_repr(self) -> str:
        return f"{self.info.name} ({self.info.kind})"


class SpikingModel(nn.Module):
    """A converted SNN: ``forward(x)`` runs T steps and returns the decoded output.

    Attributes: ``timesteps`` (T), ``warmup`` (uncounted network pre-simulation steps,
    derived from the sites' corrections), ``decode_delay`` (``T -> steps skipped when
    decoding``, or None), ``backend_name`` (the neuron backend; not ``backend``, which
    SpikingJelly's ``set_backend`` would take for its own), ``timestep_checks`` (callables ``(snn, T)`` run before each run,
    e.g. T-specific corrections warning about another T), ``time_chunk`` (steps per chunk,
    None = automatic), ``backend``,
    ``recipe`` (plain data), ``report`` (conversion report), ``sites`` (name ->
    :class:`SpikingSite`).
    """

    def __init__(self, graph: fx.GraphModule, sites: dict[str, SpikingSite], state: _RunState, *,
                 timesteps: int, factory: Callable[[NeuronSpec], NeuronLayer], input_shape=None,
                 recipe: list | None = None, report: dict | None = None):
        super().__init__()
        self.graph_module = graph
        self._site_names = list(sites)
        self._state = state
        self._factory = factory
        self.timesteps = int(timesteps)
        self.time_chunk: int | None = None
        self.decode_delay: Callable[[int], int] | None = None
        #: callables ``(snn, T)`` run before every run with its counted T (e.g. to warn when a
        #: plugin's corrections were calibrated for another T); they may warn or raise
        self.timestep_checks: list[Callable[["SpikingModel", int], None]] = []
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.backend_name = getattr(factory, "backend", "?")
        self.recipe = recipe or []
        self.report = report or {}

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, prepared: PreparedGraph, specs: dict[str, NeuronSpec], factory, *, timesteps: int,
              input_shape=None, recipe=None, report=None) -> "SpikingModel":
        gm = copy.deepcopy(prepared.module)
        state = _RunState()
        site_nodes = {}
        sites: dict[str, SpikingSite] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target.startswith("snnsite_"):
                name = node.target[len("snnsite_"):]
                info = prepared.sites[name]
                site = SpikingSite(info, specs[name], factory(specs[name]), state)
                _replace_module(gm, node.target, site)
                sites[name] = site
                site_nodes[node] = site
        # which values depend on the input, and which on neurons (temporal)
        from_input, temporal = set(), set()
        for node in gm.graph.nodes:
            deps = node.all_input_nodes
            if node.op == "placeholder" or any(d in from_input for d in deps):
                from_input.add(node)
            if node in site_nodes or any(d in temporal for d in deps):
                temporal.add(node)
        expand_count = 0
        for node in list(gm.graph.nodes):
            if node not in temporal:
                continue
            if node in site_nodes:
                src = node.args[0]
                site_nodes[node].static_input = src not in temporal
                continue
            for dep in node.all_input_nodes:
                if dep in from_input and dep not in temporal:
                    name = f"snn_time_expand_{expand_count}"
                    expand_count += 1
                    gm.add_submodule(name, TimeExpand(state))
                    with gm.graph.inserting_before(node):
                        exp = gm.graph.call_module(name, (dep,))
                    node.replace_input_with(dep, exp)
        out = next(n for n in gm.graph.nodes if n.op == "output")
        res = out.args[0]
        if isinstance(res, fx.Node) and res not in temporal:
            gm.add_submodule("snn_time_expand_out", TimeExpand(state))
            with gm.graph.inserting_before(out):
                exp = gm.graph.call_module("snn_time_expand_out", (res,))
            out.replace_input_with(res, exp)
        gm.graph.lint()
        gm.recompile()
        return cls(gm, sites, state, timesteps=timesteps, factory=factory, input_shape=input_shape,
                   recipe=recipe, report=report)

    # -- access -----------------------------------------------------------------------------------------
    @property
    def sites(self) -> dict[str, SpikingSite]:
        return {n: self.graph_module.get_submodule(site_attr(n)) for n in self._site_names}

    @property
    def specs(self) -> dict[str, NeuronSpec]:
        return {n: s.spec for n, s in self.sites.items()}

    def set_spec(self, name: str, spec: NeuronSpec) -> None:
        """Replace one site's spec; the backend rebuilds that site's neurons."""
        site = self.sites[name]
        device = next((p.device for p in self.parameters()), None) or torch.device("cpu")
        site.spec = spec
        site.neuron = self._factory(spec).to(device)

    @property
    def warmup(self) -> int:
        """Uncounted network-wide pre-simulation steps (the largest a network-scoped correction asks for)."""
        corrections = [c for s in self.sites.values() for c in s.corrections]
        if any(c.scope == "network" for c in corrections):
            return max(c.presim_steps for c in corrections)
        return 0

    @property
    def lookahead(self) -> int:
        """The largest per-site look-ahead pre-simulation (layer-scoped corrections without a warm-up)."""
        if self.warmup:
            return 0
        return max((c.presim_steps for s in self.sites.values() for c in s.corrections), default=0)

    def steps_for(self, timesteps: int | None = None) -> int:
        """Steps actually simulated for T counted steps: warm-up or look-ahead pre-simulation plus T."""
        T = self.timesteps if timesteps is None else int(timesteps)
        return self.warmup + self.lookahead + T

    @property
    def steps_run(self) -> int:
        """Steps one call actually simulates (pre-simulation plus T); ``timesteps`` is the counted T."""
        return self.steps_for()

    def decode_start(self, timesteps: int) -> int:
        """Counted steps skipped before averaging, for a run of ``timesteps`` (delayed evaluation)."""
        if self.decode_delay is None:
            return 0
        return int(min(max(0, int(self.decode_delay(timesteps))), timesteps - 1))

    # -- running ------------------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"the SNN takes a torch.Tensor batch shaped [B, ...], got {type(x).__name__}.")
        if not torch.is_floating_point(x):
            x = x.float()
        if self.input_shape is not None:
            want = (x.dim() == len(self.input_shape) + 1 and tuple(x.shape[1:]) == self.input_shape)
            if not want:
                hint = (" It looks like a single sample: add the batch dimension with x.unsqueeze(0)."
                        if tuple(x.shape) == self.input_shape else "")
                raise InputError(f"input of shape {tuple(x.shape)} does not match the shape the model was converted "
                                 f"with, [B, {', '.join(map(str, self.input_shape))}].{hint} Pass a static batch (not "
                                 "a [T, B, ...] sequence): the SNN repeats it over time itself.")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(f"the input contains {bad} NaN/Inf value(s); clean it (e.g. torch.nan_to_num) before "
                             "running the SNN.")
        device = next((p.device for p in self.parameters()), None)
        return x.to(device) if device is not None else x

    def _chunk(self, batch: int, total: int) -> int:
        floor = max(1, self.lookahead)  # a site's look-ahead must fit in the first chunk
        if self.time_chunk is not None:
            return max(floor, min(int(self.time_chunk), total))
        biggest = max((math.prod(s.info.shape) for s in self.sites.values() if s.info.shape), default=0)
        if biggest == 0:
            return total
        return max(floor, min(total, CHUNK_ELEMENTS // max(1, batch * biggest)))

    def run(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Per-step outputs of the last layer, ``[warmup + T, B, ...]`` (pre-simulation included)."""
        x = self._check_input(x)
        T = self.timesteps if timesteps is None else int(timesteps)
        if T < 1:
            raise InputError(f"timesteps must be >= 1, got {T}.")
        for check in getattr(self, "timestep_checks", ()):  # absent on models saved before it existed
            check(self, T)
        total = self.warmup + T
        state = self._state
        state.batch = x.shape[0]
        state.warmup = self.warmup
        for site in self.sites.values():
            site.clear_state()
        chunk = self._chunk(x.shape[0], total)
        outs = []
        t0 = 0
        while t0 < total:
            n = min(chunk, total - t0)
            state.n, state.t0 = n, t0
            y = self.graph_module(x)
            if not isinstance(y, torch.Tensor):
                raise InputError("the converted model must return one tensor per step.")
            outs.append(y.view(n, x.shape[0], *y.shape[1:]))
            t0 += n
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        return torch.cat(outs, 0) if len(outs) > 1 else outs[0]

    def forward(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Run the pre-simulation plus T steps on the static batch ``x``; return the decoded output.

        The output is the mean of the last layer over the counted steps (after the decoding
        delay, if a plugin set one).
        """
        per_step = self.run(x, timesteps)[self.warmup:]
        return per_step[self.decode_start(per_step.shape[0]):].mean(0)

    def sweep(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Decoded output after each of 1..T counted steps, ``[T, B, ...]``, from one run.

        Entry ``t-1`` is exactly what ``forward(x, timesteps=t)`` returns.
        """
        per_step = self.run(x, timesteps)[self.warmup:]
        T = per_step.shape[0]
        zero = torch.zeros_like(per_step[:1])
        csum = torch.cat([zero, per_step.cumsum(0)], 0)  # csum[t] = sum of steps 1..t
        ends = torch.arange(1, T + 1, device=per_step.device)
        starts = torch.tensor([self.decode_start(t) for t in range(1, T + 1)], device=per_step.device)
        shape = [-1] + [1] * (per_step.dim() - 1)
        return (csum[ends] - csum[starts]) / (ends - starts).to(per_step.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"backend={self.backend_name}, timesteps={self.timesteps}, steps_run={self.steps_run}, sites={len(self._site_names)}"


def _replace_module(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)
