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

Per-input corrections (generic; the methods live in plugins): a plugin's
``snnbridge_correct_error`` may attach :class:`~snnbridge.corrections.SiteCorrection`
objects to sites; each asks for a pre-simulation, either a look-ahead of the site's own
input (``scope="layer"``) or a shared, uncounted network warm-up (``scope="network"``, see
:mod:`snnbridge.corrections`). ``steps_run`` counts both.

Decoding window. ``snn.decode_window`` (a :class:`~snnbridge.corrections.DecodeWindow`)
may skip the first counted steps when averaging the output ("delayed evaluation");
``sweep`` applies it for every prefix length.

Recording. ``with snn.record(sites, keep=(...)) as rec:`` records what sites see and do
during the runs in the block (:mod:`snnbridge.recording`). Framework monitors on the
neurons (SpikingJelly ``monitor.*``, hooks on ``snntorch.Leaky``) are silenced during a run
and replayed once at its end with the counted steps (:class:`~snnbridge.recording.HookReplay`),
so chunking and pre-simulation never split or pad their records.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import fx, nn

from .corrections import DecodeWindow, PresimRecord, SiteCorrection, TimestepCheck, check_runnable
from .errors import BackendError, InputError
from .feeding import Feed, feeding_layer
from .graph import ConversionGraph, site_attr, site_of
from .neurons import NeuronLayer
from .plan import RunPlan, current_plan
from .recording import HookReplay, Recording
from .sites import SiteInfo
from .spec import NeuronSpec
from .surrogates import build_surrogate
from .timeline import RunState, TimeExpand

#: elements of the largest merged activation of a time chunk (automatic chunking). On CPU a
#: chunk that fits the caches wins (measured on a 2-core machine, small CIFAR VGG, batches 1-128:
#: n * B near 16-64 samples of 32 KB-element activations is fastest; merging all T steps of a batch
#: of 64 cost 1.7x, mostly in page faults of fresh large tensors); on a GPU large chunks win.
CPU_CHUNK_ELEMENTS = 1 << 20
GPU_CHUNK_ELEMENTS = 1 << 25
_OWNERS = threading.Lock()  # guards RunState.owner / depth


@contextlib.contextmanager
def _exclusive(state: RunState):
    """Hold a model's run state for this thread: the state of a run (time chunk, membranes) is the model's own,
    so two threads running one model at once would mix their runs. Nested runs of the same thread pass."""
    me = threading.get_ident()
    with _OWNERS:
        if state.owner is not None and state.owner != me:
            raise InputError("this SNN is running in another thread; one model keeps the state of one run (membrane "
                             "potentials, the current time chunk). Give each thread its own copy: "
                             "copy.deepcopy(snn).")
        state.owner, state.depth = me, state.depth + 1
    try:
        yield
    finally:
        with _OWNERS:
            state.depth -= 1
            if state.depth == 0:
                state.owner = None


class SpikingSite(nn.Module):
    """One activation site's neurons in the converted network.

    Holds the site's :class:`NeuronSpec`, the backend's :class:`NeuronLayer` (genuine
    framework neurons), and the membrane state between time chunks. Outputs weighted
    spikes ``threshold * s(t)`` in the merged layout.
    """

    def __init__(self, info: SiteInfo, spec: NeuronSpec, neuron: NeuronLayer, state: RunState):
        super().__init__()
        self.info = info
        self.spec = spec
        self.neuron = neuron
        self.static_input = False
        self._state = state
        self.v: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._presim: list[tuple] = []
        #: per-input corrections fed by a pre-simulation (:mod:`snnbridge.corrections`)
        self.corrections: list[SiteCorrection] = []

    @property
    def name(self) -> str:
        """The site's name (``snn.sites`` key)."""
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
        if self.static_input and not self._state.sequence:
            return x.unsqueeze(0).expand(n, *x.shape)
        return x.view(n, b, *x.shape[1:])

    def initial_state(self, like: torch.Tensor) -> torch.Tensor:
        """The state a run (or the counted part after a pre-simulation) starts from: the spec's ``v0``, full shape."""
        return self.spec.v0_tensor(like)

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
        self._set(v=v0, mask=mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time chunk: the site's merged ``[n*B, ...]`` input in, weighted spikes out (same layout)."""
        x_seq = self.sequence(x)
        t0, W = self._state.t0, self._state.warmup
        if t0 == 0 and self._state.before_fire is not None:  # the whole run is one chunk (see SpikingModel.run)
            replaced = self._state.before_fire(self, x_seq)
            if replaced is not None:
                if not isinstance(replaced, torch.Tensor) or replaced.shape != x_seq.shape:
                    raise InputError(f"before_fire returned {getattr(replaced, 'shape', type(replaced).__name__)} for "
                                     f"site {self.name!r}; return None or a tensor shaped {tuple(x_seq.shape)} like "
                                     "the sequence it was given.")
                x_seq = replaced
        if t0 == 0 or self.v is None:
            self._set(v=self.initial_state(x_seq[0]), mask=None, _presim=[])
        if t0 == 0:
            self._look_ahead(x_seq)
        # pieces end at the warm-up's end and where the returned steps stop (the rest only feeds look-aheads)
        n, stop = x_seq.shape[0], self._state.stop
        cuts = sorted({b - t0 for b in (W, stop) if b is not None and t0 < b < t0 + n})
        bounds = [0, *cuts, n]
        pieces = [self._run(x_seq[a:b], t0 + a) for a, b in zip(bounds, bounds[1:])]
        out = torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]
        return out.reshape(-1, *out.shape[2:])

    def _state_now(self) -> torch.Tensor:
        """The membrane state of the run in progress (``forward`` sets it before any step)."""
        assert self.v is not None
        return self.v

    def _look_ahead(self, seq: torch.Tensor) -> None:
        """The site's own look-ahead pre-simulation on the first steps of its input (a layer-scoped correction)."""
        look = self.lookahead
        if not look:
            return
        if seq.shape[0] < look:
            raise InputError(f"site {self.name!r} pre-simulates the first {look} steps of its input, but only "
                             f"{seq.shape[0]} step(s) are run; give at least {look} steps (a [T, B, ...] sequence "
                             f"of T >= {look}, or a time_chunk >= {look}).")
        drive = self.spec.biased(seq[:look], 0)
        v = self._state_now()
        res = self.neuron.simulate(drive, v.clone(), return_v=True)
        threshold = self.spec.threshold_tensor(res.spikes[0], 1)
        assert res.v_seq is not None  # asked for with return_v=True
        self._correct(PresimRecord(drive, res.spikes, res.v_seq, v, threshold))

    def _run(self, seq: torch.Tensor, start: int) -> torch.Tensor:
        W = self._state.warmup
        if self.corrections and W > 0 and start == W:
            drive, spikes, v_seq = (torch.cat([p[i] for p in self._presim], 0) for i in range(3))
            threshold = self.spec.threshold_tensor(spikes[0], 1)
            self._correct(PresimRecord(drive, spikes, v_seq, self._presim[0][3], threshold))
            self._set(_presim=[])
        in_presim = start < W
        drive = self.spec.biased(seq, start if in_presim else start - W)
        if drive.requires_grad and not self.neuron.differentiable and torch.is_grad_enabled():
            settable = type(self.neuron).set_surrogate is not NeuronLayer.set_surrogate
            raise BackendError(
                f"gradients cannot pass the {self.neuron.backend_name!r} backend's neurons (site {self.name!r}): they "
                "have no surrogate gradient, so a backward would silently train only the layers after the last "
                "neurons. "
                + ("Give them one with snn.set_surrogate(snnbridge.surrogate('localzo')) (or "
                   "snnbridge.surrogate({'sg': {'shape': 'atan'}})), run " if settable else "Run ")
                + "the SNN under torch.no_grad() (or keep its parameters at requires_grad=False), or convert with "
                "backend='spikingjelly' or 'snntorch', whose neurons have surrogate gradients.")
        keep = in_presim and bool(self.corrections)
        recordings = self._state.recordings
        v_start = self._state_now()
        result = self.neuron.simulate(drive, v_start, return_v=keep or any(r.wants_v for r in recordings))
        if keep:
            self._presim.append((drive, result.spikes, result.v_seq, v_start))
        self._set(v=result.v_last)
        out = result.weighted(self.spec.threshold_tensor(drive, 2))
        if self.mask is not None and not in_presim:
            out = out * self.mask
        stop = self._state.stop
        past = stop is not None and start >= stop  # past the returned steps: only recordings that ask see them
        for rec in recordings:
            if not past or getattr(rec, "sees_padding", False):
                rec.capture(self, drive, result, out, counted=not in_presim, v_start=v_start)
        return out

    def clear_state(self) -> None:
        """Forget the membrane state (the next run starts from the spec's initial state).

        Not called ``reset``: SpikingJelly's ``reset_net`` calls ``reset()`` on every module
        that has one (and warns for non-SpikingJelly modules); the genuine neurons inside
        the backend layer are what it should reset.
        """
        self._set(v=None, mask=None, _presim=[])

    def _set(self, **state) -> None:
        """Update the run state (plain attributes: nn.Module's __setattr__ checks are not needed per step)."""
        self.__dict__.update(state)

    def extra_repr(self) -> str:
        return f"{self.info.name} ({self.info.kind})"


class SpikingModel(nn.Module):
    """A converted SNN: ``forward(x)`` runs T steps and returns the decoded output.

    Attributes: ``timesteps`` (T), ``warmup`` (uncounted network pre-simulation steps,
    derived from the sites' corrections), ``decode_window`` (a
    :class:`~snnbridge.corrections.DecodeWindow`), ``backend_name`` (the neuron backend; not
    ``backend``, which SpikingJelly's ``set_backend`` would take for its own),
    ``timestep_checks`` (:class:`~snnbridge.corrections.TimestepCheck` objects run before
    each run), ``time_chunk`` (steps per chunk, None = automatic), ``recipe`` (plain data),
    ``report`` (conversion report), ``sites`` (name -> :class:`SpikingSite`), ``architecture``
    (the ANN's ``module:factory`` when known, for :func:`snnbridge.load`).
    """

    def __init__(self, graph: fx.GraphModule, sites: dict[str, SpikingSite], state: RunState, *,
                 timesteps: int, factory: Callable[[NeuronSpec], NeuronLayer], input_shape=None,
                 recipe: list | None = None, report: dict | None = None):
        super().__init__()
        self.graph_module = graph
        self._site_names = list(sites)
        self._state = state
        self._factory = factory
        self.timesteps = int(timesteps)
        self.time_chunk: int | None = None
        self.decode_window = DecodeWindow()
        #: run before every run with its counted T (T-specific corrections warn or refuse another T)
        self.timestep_checks: list[TimestepCheck] = []
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.backend_name = getattr(factory, "backend", "?")
        self.recipe = recipe or []
        self.report = report or {}
        #: how to rebuild the ANN's architecture (``module:factory``) when known; kept by snnbridge.save
        self.architecture: str | None = None
        #: ``forward`` runs the affine layers after the last neurons once, on the mean of their inputs
        #: over the decoded steps (equal to the per-step path up to float rounding; see snnbridge.plan)
        self.forward_on_means = True
        self._plan: RunPlan | None = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, graph: ConversionGraph, specs: dict[str, NeuronSpec], factory, *, timesteps: int,
              input_shape=None, recipe=None, report=None) -> SpikingModel:
        """Swap every site of a converted graph (a copy) for neurons from ``factory`` and mark what is temporal."""
        gm = copy.deepcopy(graph.module)
        state = RunState()
        site_nodes = {}
        sites: dict[str, SpikingSite] = {}
        for node in gm.graph.nodes:
            name = site_of(node)
            if name is not None:
                site = SpikingSite(graph.sites[name], specs[name], factory(specs[name]), state)
                gm.set_submodule(node.target, site)
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
        """name -> :class:`SpikingSite`, in network order."""
        return {n: cast(SpikingSite, self.graph_module.get_submodule(site_attr(n))) for n in self._site_names}

    def _presim_steps(self, sites) -> tuple[int, int]:
        """(network warm-up steps, per-site look-ahead steps) asked for by the sites' corrections."""
        corrections = [c for s in sites for c in s.corrections]
        if any(c.scope == "network" for c in corrections):
            return max(c.presim_steps for c in corrections), 0
        return 0, max((c.presim_steps for c in corrections), default=0)

    @property
    def specs(self) -> dict[str, NeuronSpec]:
        """name -> the site's :class:`NeuronSpec` (change one with :meth:`set_spec`)."""
        return {n: s.spec for n, s in self.sites.items()}

    def set_spec(self, name: str, spec: NeuronSpec) -> None:
        """Replace one site's spec; the backend rebuilds that site's neurons (keeping a surrogate set on them)."""
        site = self.sites[name]
        device = next((p.device for p in self.parameters()), None) or torch.device("cpu")
        site.spec = spec
        site.neuron = self._factory(spec).to(device)
        if self._surrogate_object is not None:
            site.neuron.set_surrogate(self._surrogate_object)

    def to_backend(self, backend: str, backend_options: dict | None = None) -> SpikingModel:
        """A copy of this SNN on another neuron backend: same weights, specs, corrections and decoding.

        Convert once on the fastest backend (``"torch"``), then run the result on SpikingJelly's
        or snnTorch's genuine neurons without converting again: every backend fires the same
        spikes for the same specs. This SNN is not changed. A surrogate set with
        :meth:`set_surrogate` moves along when it is a :class:`~snnbridge.surrogates.Surrogate` or a
        recipe; another framework's own object cannot, and the copy gets the new backend's default
        (with a warning).
        """
        from .factory import make_neuron_factory

        factory = make_neuron_factory(backend, backend_options)
        device = next((p.device for p in self.parameters()), None) or torch.device("cpu")
        surrogate = self._surrogate
        new = copy.deepcopy(self)
        new.__dict__.update(_factory=factory, backend_name=factory.backend, _plan=None, _surrogate=None,
                            _surrogate_object=None)
        for site in new.sites.values():
            site.neuron = factory(site.spec).to(device)
        if surrogate is not None:
            try:
                new.set_surrogate(surrogate)
            except BackendError:
                warnings.warn(f"the surrogate gradient set on this SNN ({type(surrogate).__name__}) belongs to the "
                              f"{self.backend_name!r} backend; the {factory.backend!r} copy has that backend's "
                              "default. Use snnbridge.surrogate(recipe) for one every backend takes.", stacklevel=2)
        new.train(self.training)
        return new

    # -- surrogate gradients ------------------------------------------------------------------------------
    #: what set_surrogate was given (None: each backend's default), and the backend's object for it
    _surrogate: Any = None
    _surrogate_object: Any = None

    @property
    def surrogate(self) -> Any:
        """The surrogate gradient set with :meth:`set_surrogate` (as given), or None for the backend's default."""
        return self._surrogate

    def set_surrogate(self, surrogate: Any = None) -> Any:
        """Give every site's genuine neurons this surrogate gradient; returns the previous one (None: the default).

        ``surrogate``: a :class:`~snnbridge.surrogates.Surrogate` (``snnbridge.surrogate(recipe)``; every backend
        takes it), the object ``snnbridge.surrogate(recipe, framework=<this backend>)`` returned, or a native
        surrogate of this backend's framework (SpikingJelly: ``surrogate.ATan()``; snnTorch:
        ``snntorch.surrogate.atan()``, wrapped to fire on ``>=`` like every snnbridge neuron); a recipe
        (``"localzo"``, ``{"sg": {"shape": "triangle"}}``) is built with :func:`snnbridge.surrogate`. ``None`` restores
        each backend's default: SpikingJelly's ``Sigmoid(alpha=4)``, snnTorch's arc-tangent (alpha 2), and no
        gradient on the torch backend. Another framework's object raises
        :class:`~snnbridge.errors.BackendError`. Forward spikes never change; only gradients do.

        Cheap (one attribute per site) and reversible, so ``prev = snn.set_surrogate(s)`` ...
        ``snn.set_surrogate(prev)`` (or ``with snn.using_surrogate(s):``) switches surrogates in turn.
        :func:`snnbridge.save` records a surrogate built from a recipe and :func:`snnbridge.load`
        sets it again (other surrogates are not saved, with a warning).
        """
        if isinstance(surrogate, (str, Mapping, list, tuple)):  # a recipe: snn.set_surrogate("localzo")
            surrogate = build_surrogate(surrogate)
        wrap = getattr(self._factory, "wrap_surrogate", None)  # a NeuronFactory (a plain callable cannot wrap)
        if surrogate is not None and wrap is None:
            raise BackendError(f"this SNN's neurons come from {self._factory!r}, which cannot wrap a surrogate; "
                               "convert with snnbridge.convert(..., backend=...) to get a factory that can.")
        obj = wrap(surrogate) if surrogate is not None and wrap is not None else None
        sites = list(self.sites.values())
        try:
            for site in sites:
                site.neuron.set_surrogate(obj)
        except Exception:  # all sites or none
            for site in sites:
                site.neuron.set_surrogate(self._surrogate_object)
            raise
        previous = self._surrogate
        self.__dict__.update(_surrogate=surrogate, _surrogate_object=obj)  # plain attributes, not submodules
        return previous

    @contextlib.contextmanager
    def using_surrogate(self, surrogate: Any):
        """``with snn.using_surrogate(s):`` - :meth:`set_surrogate` for the block, the previous one restored after."""
        previous = self.set_surrogate(surrogate)
        try:
            yield self
        finally:
            self.set_surrogate(previous)

    @property
    def warmup(self) -> int:
        """Uncounted network-wide pre-simulation steps (the largest a network-scoped correction asks for)."""
        return self._presim_steps(self.sites.values())[0]

    @property
    def lookahead(self) -> int:
        """The largest per-site look-ahead pre-simulation (layer-scoped corrections without a warm-up)."""
        return self._presim_steps(self.sites.values())[1]

    def padded_steps(self, timesteps: int | None = None) -> int:
        """Steps after the warm-up that a run of T counted steps simulates: T, or the look-ahead when longer.

        A site's look-ahead reads the first ``lookahead`` steps of its input, so a shorter run
        simulates that many and returns its first T (the rest only feed later sites'
        look-aheads; identical to reading step T of a longer run's ``sweep``, as COS's official
        code reports T < rho). A per-step bias table needs this many rows.
        """
        T = self.timesteps if timesteps is None else int(timesteps)
        return max(T, self.lookahead)

    def steps_for(self, timesteps: int | None = None) -> int:
        """Steps actually simulated for T counted steps: warm-up or look-ahead pre-simulation plus the run."""
        return self.warmup + self.lookahead + self.padded_steps(timesteps)

    @property
    def steps_run(self) -> int:
        """Steps one call actually simulates (pre-simulation plus T); ``timesteps`` is the counted T."""
        return self.steps_for()

    def decode_start(self, timesteps: int) -> int:
        """Counted steps skipped before averaging, for a run of ``timesteps`` (delayed evaluation)."""
        return self.decode_window.start(timesteps)

    # -- plugin helpers -----------------------------------------------------------------------------------
    def record(self, sites: Iterable[str] | str | None = None, keep: Iterable[str] | str = ("spikes",)) -> Recording:
        """Record what ``sites`` (default: all) see and do in the runs of a ``with`` block.

        ``keep``: any of ``drive``, ``spikes``, ``v``, ``output``, ``rate``, ``drive_mean``
        (see :mod:`snnbridge.recording`).
        """
        return Recording(self, sites, keep)

    def feeding_layer(self, site: str) -> Feed | None:
        """The Conv/Linear of this SNN whose bias reaches ``site`` unchanged, or None (:mod:`snnbridge.feeding`)."""
        return feeding_layer(self.graph_module, site)

    # -- running ------------------------------------------------------------------------------------------
    def _check_input(self, x: Any, time_major: bool) -> torch.Tensor:
        """``x`` as a float tensor on the model's device, or an :class:`InputError` naming the fix."""
        if not isinstance(x, torch.Tensor):
            layout = "[T, B, ...] sequence" if time_major else "[B, ...] batch"
            raise InputError(f"the SNN takes a torch.Tensor {layout}, got {type(x).__name__}.")
        if not torch.is_floating_point(x):
            raise InputError(f"the input is a {x.dtype} tensor; the SNN takes floating-point inputs prepared as for "
                             "the "
                             "ANN: convert with x.float() and normalise as in training (uint8 images: "
                             "x.float() / 255, then the training mean/std).")
        lead = 2 if time_major else 1
        if self.input_shape is not None:
            sample = tuple(x.shape[lead:])
            if x.dim() != len(self.input_shape) + lead or sample != self.input_shape:
                want = ("[T, B, " if time_major else "[B, ") + ", ".join(map(str, self.input_shape)) + "]"
                raise InputError(f"input of shape {tuple(x.shape)} does not match the shape the model was converted "
                                 f"with, {want}.{self._shape_hint(x, time_major)}")
        if x.dim() <= lead - 1 or x.shape[0] == 0 or (time_major and x.shape[1] == 0):
            raise InputError(f"the input of shape {tuple(x.shape)} holds no sample; pass at least one.")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(f"the input contains {bad} NaN/Inf value(s); clean it (e.g. torch.nan_to_num) before "
                             "running the SNN.")
        param = next(self.parameters(), None)
        return x if param is None else x.to(device=param.device, dtype=param.dtype)  # e.g. float32 data, .half() SNN

    def _shape_hint(self, x: torch.Tensor, time_major: bool) -> str:
        """The likely mistake behind an input of the wrong shape."""
        shape, want = tuple(x.shape), self.input_shape or ()
        if not time_major and shape == want:
            return " It looks like a single sample: add the batch dimension with x.unsqueeze(0)."
        if not time_major and x.dim() == len(want) + 2 and shape[2:] == want:
            return (" It looks like a [T, B, ...] sequence: pass time_major=True (snn(x_seq, time_major=True)) to "
                    "feed one input per step.")
        if time_major and x.dim() == len(want) + 1 and shape[1:] == want:
            return " It is a static [B, ...] batch: drop time_major=True, the SNN repeats it over time itself."
        if x.dim() == len(want) + (2 if time_major else 1) and len(want) >= 2:
            got = "x".join(map(str, shape[-(len(want) - 1):]))
            size = "x".join(map(str, want[1:]))
            if shape[-len(want)] != want[0]:
                return (f" It has {shape[-len(want)]} channel(s) where the model takes {want[0]}; check grey-scale "
                        "vs RGB and the channel position ([B, C, H, W]).")
            return (f" The samples are {got} where the model was converted with {size}: resize the inputs, or "
                    "convert again with calibration data of this size.")
        return ""

    def _chunk(self, sites, lookahead: int, batch: int, total: int, device: torch.device) -> int:
        floor = max(1, lookahead)  # a site's look-ahead must fit in the first chunk
        if self._state.before_fire is not None:
            return total  # before_fire sees each site's whole input sequence
        if self.time_chunk is not None:
            return max(floor, min(int(self.time_chunk), total))
        biggest = max((math.prod(s.info.shape) for s in sites if s.info.shape), default=0)
        if biggest == 0:
            return total
        budget = GPU_CHUNK_ELEMENTS if device.type == "cuda" else CPU_CHUNK_ELEMENTS
        return max(floor, min(total, budget // max(1, batch * biggest)))

    @property
    def plan(self) -> RunPlan:
        """The prefix / body / tail graphs a run executes (rebuilt when ``graph_module`` changes)."""
        plan = current_plan(self.graph_module, self._plan)
        if plan is not self._plan:
            self._plan = plan
        return plan

    def _chunks(self, *args, **kwargs) -> tuple:
        """:meth:`_run_chunks` with the model held by this thread (a second thread gets a clear error)."""
        with _exclusive(self._state):
            return self._run_chunks(*args, **kwargs)

    def _run_chunks(self, x: torch.Tensor, timesteps: int | None, graph: str, consume,
                    time_major: bool = False) -> tuple:
        """Run the prefix once (per chunk for a sequence input), then ``graph`` ("body", "head" or "until:<site>")
        per time chunk; ``consume(t0, n, y)`` takes each chunk's result. Returns the prefix's static values."""
        if time_major:
            T = x.shape[0]
            if timesteps is not None and int(timesteps) != T:
                raise InputError(f"a [T, B, ...] sequence of {T} steps was given with timesteps={timesteps}; the "
                                 "sequence sets T: leave timesteps out, or slice the sequence.")
        else:
            T = self.timesteps if timesteps is None else int(timesteps)
        if T < 1:
            raise InputError(f"timesteps must be >= 1, got {T}.")
        plan = self.plan
        sites = list(self.sites.values())
        warmup, lookahead = self._presim_steps(sites)
        if time_major and warmup:
            raise InputError(f"this SNN runs {warmup} uncounted warm-up steps on its input before counting (a network "
                             "pre-simulation correction such as srp or cos), which is defined for a static input "
                             "only; pass a static [B, ...] batch, or convert without that correction.")
        if time_major and T < lookahead:
            raise InputError(f"this SNN's sites look ahead on the first {lookahead} steps of their input (a per-site "
                             f"pre-simulation such as cos's rho), but the [T, B, ...] sequence has {T}; give at least "
                             f"{lookahead} steps, or read shorter runs from snn.sweep of a longer sequence.")
        padded = max(T, lookahead)  # padded_steps: a short run under a look-ahead returns its first T
        for check in self.timestep_checks:
            check(self, T)
        check_runnable(self, padded)  # per-step tables set by hand, too: one error before any step
        total = warmup + padded
        state = self._state
        batch = x.shape[1] if time_major else x.shape[0]
        state.batch, state.warmup, state.sequence = batch, warmup, time_major
        state.stop = warmup + T if padded > T else None
        for site in sites:
            site.clear_state()
        chunk = self._chunk(sites, lookahead, batch, total, x.device)
        step = plan.until(graph[len("until:"):]) if graph.startswith("until:") else getattr(plan, graph)
        replay = HookReplay.start(sites, state.recordings)  # framework monitors on the neurons: one record per run
        try:
            static = () if time_major else plan.prefix(x)
            for rec in state.recordings:
                rec.begin_run(state.warmup)
            t0 = 0
            while t0 < total:
                n = min(chunk, total - t0)
                state.n, state.t0 = n, t0
                if time_major:  # the layers before the first neurons run on every step's input
                    static = plan.prefix(x[t0:t0 + n].reshape(n * batch, *x.shape[2:]))
                consume(t0, n, step(*static))
                t0 += n
            for rec in state.recordings:
                rec.end_run()
        finally:
            state.sequence, state.stop = False, None
            if replay is not None:
                replay.stop(state.recordings)
        if replay is not None:
            replay.fire()
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[2 if time_major else 1:])
        return static

    def run(self, x: torch.Tensor, timesteps: int | None = None, *, until: str | None = None,
            time_major: bool = False, before_fire: Callable[[SpikingSite, torch.Tensor], Any] | None = None
            ) -> torch.Tensor:
        """Per-step outputs of the last layer, ``[warmup + T, B, ...]`` (pre-simulation included).

        ``until``: stop after that site: only the layers it depends on run, and its per-step
        output (weighted spikes, masks applied) is returned. Plugins that calibrate site by site
        use it to skip the rest of the network (recordings of the sites that ran still work).
        ``time_major``: ``x`` is a ``[T, B, ...]`` sequence, one input per step (see :meth:`forward`).

        ``before_fire(site, sequence)``: called at every site that runs, in network order, with
        the :class:`SpikingSite` and its whole input sequence ``[warmup + n, B, ...]`` (the
        ``snn.warmup`` uncounted steps first, then ``n = snn.padded_steps(T)``; the spec's per-step
        biases not yet added), before
        its neurons fire. It may change that site's spec (``snn.set_spec``): the site then fires
        with the new one, and later sites see its new spikes. It returns None, or a tensor of the
        same shape to fire on instead. Calibrating every site of one batch in one run this way
        costs one simulation, where re-running the network up to each site costs one per site.
        The run is then a single time chunk.
        """
        x = self._check_input(x, time_major)
        if until is not None and until not in self._site_names:
            raise InputError(f"the SNN has no site {until!r}; its sites are {', '.join(self._site_names)}.")
        if before_fire is not None:
            if not callable(before_fire):
                raise InputError(f"before_fire must be a function (site, sequence) -> None or a tensor, got "
                                 f"{type(before_fire).__name__}.")
            previous, self._state.before_fire = self._state.before_fire, before_fire
            try:
                return self.run(x, timesteps, until=until, time_major=time_major)
            finally:
                self._state.before_fire = previous
        outs = []

        def keep(t0, n, y):
            if not isinstance(y, torch.Tensor):
                raise InputError("the converted model must return one tensor per step.")
            outs.append(y.view(n, self._state.batch, *y.shape[1:]))

        self._chunks(x, timesteps, "body" if until is None else f"until:{until}", keep, time_major)
        out = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
        T = x.shape[0] if time_major else (self.timesteps if timesteps is None else int(timesteps))
        return out[:self.warmup + T]  # a short run under a look-ahead simulated more (padded_steps)

    def steps(self, x: torch.Tensor, timesteps: int | None = None, *, time_major: bool = False) -> torch.Tensor:
        """Per-step outputs of the last layer for the T counted steps, ``[T, B, ...]`` (pre-simulation left out).

        What snnTorch's and SpikingJelly's losses and accuracy functions take (e.g.
        ``snntorch.functional.accuracy_rate``); ``forward`` is its mean over the decoded steps.
        """
        return self.run(x, timesteps, time_major=time_major)[self.warmup:]

    def forward(self, x: torch.Tensor, timesteps: int | None = None, *, time_major: bool = False) -> torch.Tensor:
        """Run the pre-simulation plus T steps on the static batch ``x``; return the decoded output.

        The output is the mean of the last layer over the counted steps (after the decoding
        delay, if a plugin set one). With ``forward_on_means`` and affine layers after the last
        neurons, those layers run once on the mean of their inputs (same result up to rounding).

        ``time_major=True``: ``x`` is a ``[T, B, ...]`` sequence (event frames, encoded
        spikes): step ``t`` gets ``x[t]``, so the layers before the first neurons run on every
        step instead of once, and T is the sequence length. On a sequence that repeats one
        batch this equals the static path (up to float rounding).
        """
        plan = self.plan
        if time_major or not (self.forward_on_means and plan.tail_is_affine):
            per_step = self.run(x, timesteps, time_major=time_major)[self.warmup:]
            return per_step[self.decode_start(per_step.shape[0]):].mean(0)
        x = self._check_input(x, False)
        T = self.timesteps if timesteps is None else int(timesteps)
        warmup = self.warmup
        first = warmup + self.decode_start(T)  # absolute index of the first decoded step
        sums: list = []

        def accumulate(t0, n, values):
            lo, hi = max(first - t0, 0), min(warmup + T - t0, n)  # steps past T only fed look-aheads
            if lo < hi:
                parts = [v.view(n, x.shape[0], *v.shape[1:])[lo:hi].sum(0) for v in values]
                sums[:] = parts if not sums else [a + b for a, b in zip(sums, parts)]

        static = self._chunks(x, timesteps, "head", accumulate)
        count = warmup + T - first
        self._state.n = 1  # the tail runs once, on [B, ...] means
        assert plan.tail is not None  # tail_is_affine
        return plan.tail(*[static[i] for i in plan.tail_static], *[v / count for v in sums])

    def sweep(self, x: torch.Tensor, timesteps: int | None = None, *, time_major: bool = False) -> torch.Tensor:
        """Decoded output after each of 1..T counted steps, ``[T, B, ...]``, from one run.

        Entry ``t-1`` is exactly what ``forward(x, timesteps=t)`` returns.
        """
        per_step = self.run(x, timesteps, time_major=time_major)[self.warmup:]
        T = per_step.shape[0]
        zero = torch.zeros_like(per_step[:1])
        csum = torch.cat([zero, per_step.cumsum(0)], 0)  # csum[t] = sum of steps 1..t
        ends = torch.arange(1, T + 1, device=per_step.device)
        starts = torch.tensor([self.decode_start(t) for t in range(1, T + 1)], device=per_step.device)
        shape = [-1] + [1] * (per_step.dim() - 1)
        return (csum[ends] - csum[starts]) / (ends - starts).to(per_step.dtype).view(shape)

    def train(self, mode: bool = True) -> SpikingModel:
        """Set training mode (SpikingJelly/snnTorch neurons see it), keeping BatchNorm layers the conversion kept
        in eval mode: their statistics are the ANN's, and batch statistics over time steps would change the SNN."""
        super().train(mode)
        for m in self.graph_module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def extra_repr(self) -> str:
        return (f"backend={self.backend_name}, timesteps={self.timesteps}, steps_run={self.steps_run}, "
                f"sites={len(self._site_names)}")

