"""Recording what sites see and do during a run: ``with snn.record(sites, keep=...) as rec:``.

Inside the block, every run of the SNN (``snn(x)``, ``snn.sweep(x)``, ``snn.run(x)``) is
recorded at the chosen sites; ``rec[name]`` then holds the runs concatenated along the batch
dimension, and ``rec.runs`` one :class:`SiteTrace` dict per run::

    with snn.record(keep=("spikes", "v")) as rec:
        snn(x)
    rec["conv1"].spikes            # [steps, B, C, H, W]: every simulated step, warm-up first
    rec["conv1"].counted("spikes") # the T counted steps only

What can be kept (``keep``):

* ``"drive"``: the input the neurons integrate, per-step biases included;
* ``"spikes"``: 0/1 spikes;
* ``"v"``: the membrane after each step's reset;
* ``"output"``: what the site passes on, ``threshold * spike`` with output masks applied;
* ``"rate"``: the mean of ``output`` over the counted steps, ``[B, ...]``;
* ``"drive_mean"``: the mean of ``drive`` over the counted steps, ``[B, ...]`` (without
  keeping the sequence).

Sequences cover every simulated step of the network run (an uncounted network warm-up
first); a layer-scoped look-ahead pre-simulation of a site is not part of them, nor are the
steps a run shorter than that look-ahead simulates past its T (``snn.padded_steps``; a
recording whose ``sees_padding`` is True, such as the energy counter, gets those too). The
recording is detached from the model when the block ends, so a model can be saved or copied
afterwards.

For users, :func:`record` (``snnbridge.record(snn, x)``) runs once and returns plain
``{site: {what: tensor}}`` dicts of the counted steps. :class:`HookReplay` is how the runtime
gives framework monitors (SpikingJelly's ``monitor.*``, hooks on ``snntorch.Leaky``) one
record per run: see :mod:`snnbridge.neurons`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import InputError, did_you_mean
from .neurons import CountedSteps

if TYPE_CHECKING:  # pragma: no cover
    from .neurons import SimResult
    from .runtime import SpikingModel, SpikingSite

SEQUENCES = ("drive", "spikes", "v", "output")
REDUCTIONS = ("rate", "drive_mean")
KEEP = SEQUENCES + REDUCTIONS


@dataclass
class SiteTrace:
    """What one site did in one or more runs (fields not asked for are ``None``).

    ``warmup``: the uncounted steps at the start of each sequence.
    """

    warmup: int = 0
    drive: torch.Tensor | None = None
    spikes: torch.Tensor | None = None
    v: torch.Tensor | None = None
    output: torch.Tensor | None = None
    rate: torch.Tensor | None = None
    drive_mean: torch.Tensor | None = None

    def counted(self, field: str) -> torch.Tensor:
        """A recorded sequence without the uncounted warm-up steps, ``[T, B, ...]``."""
        seq = getattr(self, field)
        if field not in SEQUENCES or seq is None:
            raise InputError(f"{field!r} was not recorded as a sequence; record it with keep=({field!r},).")
        return seq[self.warmup:]


class _RunCapture:
    """The parts one site produced during one run (chunks, warm-up split)."""

    def __init__(self, keep: tuple[str, ...]):
        self.keep = keep
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in SEQUENCES if k in keep}
        self.counted_output: list[torch.Tensor] = []
        self.drive_sum: torch.Tensor | None = None
        self.counted_steps = 0

    def add(self, drive: torch.Tensor, result: SimResult, output: torch.Tensor, counted: bool) -> None:
        values = {"drive": lambda: drive, "spikes": lambda: result.spikes, "v": lambda: result.v_seq,
                  "output": lambda: output}  # only what is kept is computed (spikes may be derived)
        for k, parts in self.parts.items():
            value = values[k]()
            if value is None:
                raise RuntimeError(f"the backend returned no {k!r} sequence although it was asked for")
            parts.append(value.detach())
        if counted:
            self.counted_steps += drive.shape[0]
            if "rate" in self.keep:
                self.counted_output.append(output.detach())
            if "drive_mean" in self.keep:
                s = drive.detach().sum(0)
                self.drive_sum = s if self.drive_sum is None else self.drive_sum + s

    def trace(self, warmup: int) -> SiteTrace:
        out = SiteTrace(warmup=warmup)
        for k, parts in self.parts.items():
            if parts:
                setattr(out, k, torch.cat(parts, 0) if len(parts) > 1 else parts[0])
        T = max(1, self.counted_steps)
        if "rate" in self.keep and self.counted_output:
            seq = torch.cat(self.counted_output, 0) if len(self.counted_output) > 1 else self.counted_output[0]
            out.rate = seq.sum(0) / T
        if "drive_mean" in self.keep and self.drive_sum is not None:
            out.drive_mean = self.drive_sum / T
        return out


class Recording:
    """The record of the runs made inside one ``with snn.record(...)`` block (see the module docstring)."""

    def __init__(self, snn: SpikingModel, sites: Iterable[str] | str | None = None,
                 keep: Iterable[str] | str = ("spikes",)):
        names = list(snn.sites) if sites is None else ([sites] if isinstance(sites, str) else list(sites))
        unknown = [n for n in names if n not in snn.sites]
        if unknown:
            raise InputError(f"the SNN has no site {unknown[0]!r}.{did_you_mean(unknown[0], list(snn.sites))} Its "
                             f"sites: {', '.join(snn.sites)}.")
        keep = (keep,) if isinstance(keep, str) else tuple(keep)
        bad = [k for k in keep if k not in KEEP]
        if bad or not keep:
            raise InputError("cannot record "
                             f"{bad[0] if bad else 'nothing'!r}.{did_you_mean(bad[0], KEEP) if bad else ''}"
                             f" keep may hold: {', '.join(KEEP)}.")
        self.snn = snn
        self.sites = names
        self.keep = keep
        self.runs: list[dict[str, SiteTrace]] = []
        self._current: dict[str, _RunCapture] | None = None
        self._warmup = 0

    # -- the runtime's side ------------------------------------------------------------------------
    @property
    def wants_v(self) -> bool:
        """Whether the runtime must compute membrane sequences for this recording."""
        return "v" in self.keep

    def begin_run(self, warmup: int) -> None:
        """Called by the runtime when a run starts (``warmup``: its uncounted steps)."""
        self._warmup = int(warmup)
        self._current = {n: _RunCapture(self.keep) for n in self.sites}

    def capture(self, site: SpikingSite, drive: torch.Tensor, result: SimResult, output: torch.Tensor,
                counted: bool, v_start: torch.Tensor | None = None) -> None:
        """Called by the runtime for each chunk a site ran (``counted``: False during a pre-simulation)."""
        if self._current is not None and site.name in self._current:
            self._current[site.name].add(drive, result, output, counted)

    def end_run(self) -> None:
        """Called by the runtime when a run ends: the run's traces become ``runs[-1]``."""
        if self._current is not None:
            self.runs.append({n: c.trace(self._warmup) for n, c in self._current.items()})
        self._current = None

    # -- the user's side ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> SiteTrace:
        if name not in self.sites:
            raise KeyError(f"site {name!r} was not recorded (recorded: {', '.join(self.sites)})")
        if not self.runs:
            raise InputError("nothing was recorded: run the SNN inside the `with snn.record(...)` block.")
        traces = [run[name] for run in self.runs]
        if len(traces) == 1:
            return traces[0]
        out = SiteTrace(warmup=traces[0].warmup)
        for k in KEEP:
            parts = [getattr(t, k) for t in traces]
            if parts[0] is not None:
                dim = 1 if k in SEQUENCES else 0
                try:
                    setattr(out, k, torch.cat(parts, dim))
                except RuntimeError as exc:
                    raise InputError(f"the recorded runs of site {name!r} differ in length or shape and cannot be "
                                     f"joined; read them one by one from rec.runs ({exc}).") from None
        return out

    def sample_mean(self, name: str, field: str = "rate") -> torch.Tensor:
        """The mean over every recorded sample of a per-sample field (``rate`` or ``drive_mean``), ``[C, ...]``.

        Summed run by run, then divided by the number of samples.
        """
        if field not in REDUCTIONS:
            raise InputError(f"sample_mean averages one of {', '.join(REDUCTIONS)}, not {field!r}.")
        total, n = None, 0
        for run in self.runs:
            value = getattr(run[name], field)
            if value is None:
                raise InputError(f"{field!r} was not recorded at site {name!r}; record it with keep=({field!r},).")
            s = value.sum(0)
            total = s if total is None else total + s
            n += value.shape[0]
        if total is None:
            raise InputError("nothing was recorded: run the SNN inside the `with snn.record(...)` block.")
        return total / n

    def __enter__(self) -> Recording:
        self.snn._state.recordings.append(self)
        return self

    def __exit__(self, *exc) -> None:
        recs = self.snn._state.recordings
        if self in recs:
            recs.remove(self)
        self._current = None


class HookReplay:
    """Framework hooks on the sites' neurons, fired once per run for the counted steps.

    The runtime starts one for a run when some site's neuron layer reports framework hooks
    (:meth:`~snnbridge.NeuronLayer.framework_hooks`): the layers run with their hooks silenced,
    this object collects the counted steps like a recording, and :meth:`fire` hands each layer
    its ``[T, B, ...]`` steps after the run. Pre-simulated steps (a network warm-up, a site's
    look-ahead) are never shown to the hooks, and chunking does not split the record.
    """

    def __init__(self, sites: list[SpikingSite]):
        self.sites = {s.name: s for s in sites}
        self.wants_v = any(s.neuron.hooks_need_v() for s in sites)
        self._parts: dict[str, list[tuple]] = {}
        self._v_start: dict[str, torch.Tensor | None] = {}

    @classmethod
    def start(cls, sites, recordings: list) -> HookReplay | None:
        """A replay for the sites whose neurons carry framework hooks (None when none do), added to ``recordings``."""
        hooked = [s for s in sites if s.neuron.framework_hooks()]
        if not hooked:
            return None
        replay = cls(hooked)
        for s in hooked:
            s.neuron.deferring_hooks = True
        recordings.append(replay)
        return replay

    def begin_run(self, warmup: int) -> None:
        self._parts = {n: [] for n in self.sites}
        self._v_start = {}

    def capture(self, site: SpikingSite, drive: torch.Tensor, result: SimResult, output: torch.Tensor,
                counted: bool, v_start: torch.Tensor | None = None) -> None:
        parts = self._parts.get(site.name)
        if parts is None or not counted:
            return
        if not parts:
            self._v_start[site.name] = v_start
        parts.append((drive, result.spikes, result.v_seq, result.v_last))

    def end_run(self) -> None:
        pass

    def stop(self, recordings: list) -> None:
        """Leave the run: hooks fire normally again (called even when the run failed)."""
        if self in recordings:
            recordings.remove(self)
        for s in self.sites.values():
            s.neuron.deferring_hooks = False

    def fire(self) -> None:
        """Replay the finished run's counted steps to each hooked layer."""
        for name, parts in self._parts.items():
            if parts:
                drive, spikes = _join([p[0] for p in parts]), _join([p[1] for p in parts])
                v_start = self._v_start[name]
                assert drive is not None and spikes is not None and v_start is not None  # always captured
                self.sites[name].neuron.replay_hooks(CountedSteps(drive=drive, spikes=spikes,
                                                                  v_seq=_join([p[2] for p in parts]),
                                                                  v_start=v_start, v_last=parts[-1][3]))


def _join(parts: list) -> torch.Tensor | None:
    """Chunks of one sequence joined along time (None when the sequence was not computed)."""
    if parts[0] is None:
        return None
    return torch.cat(parts, 0) if len(parts) > 1 else parts[0]


def record(snn: SpikingModel, x: torch.Tensor, what: Iterable[str] | str = ("spikes", "v"),
           sites: Iterable[str] | str | None = None, timesteps: int | None = None,
           time_major: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``snn`` once on the static batch ``x``; return ``{site: {what: tensor}}`` for the counted steps.

    ``what``: any of ``drive``, ``spikes``, ``v``, ``output`` (sequences, ``[T, B, ...]``) and
    ``rate``, ``drive_mean`` (means over the counted steps, ``[B, ...]``), as for
    ``snn.record`` (module docstring). ``sites``: names (default: every site, in network
    order). ``timesteps``: the counted T (default ``snn.timesteps``); ``time_major``: ``x`` is
    a ``[T, B, ...]`` sequence (see ``SpikingModel.forward``). An uncounted warm-up is
    left out (use ``snn.record`` to see it); the same call gives the same spikes on every
    backend. Runs without gradients.
    """
    from .runtime import SpikingModel  # the runtime imports this module

    if not isinstance(snn, SpikingModel):
        raise InputError(f"snnbridge.record takes a converted model (what snnbridge.convert or snnbridge.load "
                         f"return), got {type(snn).__name__}.")
    what = (what,) if isinstance(what, str) else tuple(what)
    bad = [k for k in what if k not in KEEP]
    if bad or not what:
        hint = did_you_mean(bad[0], KEEP) if bad else ""
        raise InputError(f"snnbridge.record cannot record what={bad[0] if bad else 'nothing'!r}.{hint} what may "
                         f"hold: {', '.join(KEEP)}.")
    with torch.no_grad(), snn.record(sites, keep=what) as rec:
        snn(x, timesteps, time_major=time_major)
    out = {}
    for name in rec.sites:
        trace = rec[name]
        out[name] = {k: trace.counted(k) if k in SEQUENCES else getattr(trace, k) for k in what}
    return out
