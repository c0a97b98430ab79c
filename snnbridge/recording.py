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
first); a layer-scoped look-ahead pre-simulation of a site is not part of them. The
recording is detached from the model when the block ends, so a model can be saved or copied
afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

from .errors import InputError, did_you_mean

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

    def add(self, drive: torch.Tensor, result: "SimResult", output: torch.Tensor, counted: bool) -> None:
        values = {"drive": lambda: drive, "spikes": lambda: result.spikes, "v": lambda: result.v_seq,
                  "output": lambda: output}  # only what is kept is computed (spikes may be derived)
        for k, parts in self.parts.items():
            parts.append(values[k]().detach())
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

    def __init__(self, snn: "SpikingModel", sites: Iterable[str] | str | None = None,
                 keep: Iterable[str] | str = ("spikes",)):
        names = list(snn.sites) if sites is None else ([sites] if isinstance(sites, str) else list(sites))
        unknown = [n for n in names if n not in snn.sites]
        if unknown:
            raise InputError(f"the SNN has no site {unknown[0]!r}.{did_you_mean(unknown[0], list(snn.sites))} Its "
                             f"sites: {', '.join(snn.sites)}.")
        keep = (keep,) if isinstance(keep, str) else tuple(keep)
        bad = [k for k in keep if k not in KEEP]
        if bad or not keep:
            raise InputError(f"cannot record {bad[0] if bad else 'nothing'!r}.{did_you_mean(bad[0], KEEP) if bad else ''}"
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
        return "v" in self.keep

    def begin_run(self, warmup: int) -> None:
        self._warmup = int(warmup)
        self._current = {n: _RunCapture(self.keep) for n in self.sites}

    def capture(self, site: "SpikingSite", drive: torch.Tensor, result: "SimResult", output: torch.Tensor,
                counted: bool) -> None:
        if self._current is not None and site.name in self._current:
            self._current[site.name].add(drive, result, output, counted)

    def end_run(self) -> None:
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

    def __enter__(self) -> "Recording":
        self.snn._state.recordings.append(self)
        return self

    def __exit__(self, *exc) -> None:
        recs = self.snn._state.recordings
        if self in recs:
            recs.remove(self)
        self._current = None
