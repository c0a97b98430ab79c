"""The public correction API: what a plugin attaches to a converted SNN at ``snnbridge_correct_error``.

Three kinds of attachment; :func:`snnbridge.save` keeps them as plain data (see :class:`Savable`):

* :class:`SiteCorrection` - a per-input correction of one site's neurons, decided from a short
  pre-simulation. ``adjust`` receives a :class:`PresimRecord` and returns an
  :class:`Adjustment` (a new initial state and/or an output mask, per sample). Attach with
  ``snn.sites[name].corrections.append(obj)``. ``scope`` says which pre-simulation it wants:

  - ``"layer"``: the site pre-simulates the first ``presim_steps`` steps of its *own* counted
    input sequence (a look-ahead; the input already comes from corrected upstream sites),
    then runs the counted sequence again from the state the corrections return;
  - ``"network"``: the whole network runs ``presim_steps`` uncounted warm-up steps first; at
    the boundary every site hands its record to its corrections and restarts from their state,
    with their masks.

  When any correction of a model is network-scoped, all of them share the network warm-up.
  Corrections of one site run in the order they were attached (recipe order); each sees the
  state proposed by the previous one.
* :class:`DecodeWindow` - ``snn.decode_window``: which counted steps the decoded output
  averages (delayed evaluation).
* :class:`TimestepCheck` - an entry of ``snn.timestep_checks``, run before every run: a
  T-specific correction warns or refuses when the SNN runs another T. The core attaches one
  for every plugin whose :class:`~snnbridge.plugin.PluginInfo` says ``t_specific=True``.

Per-step biases and initial potentials shared by all samples are not corrections: they are
fields of the :class:`~snnbridge.spec.NeuronSpec` (``snn.set_spec``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError, TimestepError
from .options import Option

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import SpikingSite

SCOPES = ("layer", "network")
_SAVABLE: dict[str, type[Savable]] = {}


def class_ref(cls: type) -> str:
    """``module:QualName`` of a class: how a saved SNN names the class of an attachment."""
    return f"{cls.__module__}:{cls.__qualname__}"


class Savable:
    """An object a saved SNN keeps as plain data: its class reference plus :meth:`state_dict`.

    Loading never unpickles: it looks the class up among the :class:`Savable` subclasses
    already imported (every plugin of the file's recipe is imported first), then calls
    :meth:`from_state_dict`. The defaults store the instance attributes, which must be
    numbers, strings, ``None``, tensors, or lists/tuples/dicts of those; override both
    methods for anything else.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _SAVABLE[class_ref(cls)] = cls

    def state_dict(self) -> dict[str, Any]:
        """The plain data that rebuilds this object (default: its instance attributes)."""
        return dict(vars(self))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]):
        """Rebuild an object from :meth:`state_dict` (default: set the attributes, ``__init__`` not called)."""
        obj = cls.__new__(cls)
        obj.__dict__.update(state)
        return obj


def savable_class(ref: str) -> type[Savable] | None:
    """The imported :class:`Savable` subclass named ``ref`` (``module:QualName``), or None."""
    return _SAVABLE.get(ref)
MISMATCH_POLICIES = ("warn", "error", "ignore")


@dataclass
class PresimRecord:
    """What a site saw during its pre-simulation (``[P, B, ...]`` tensors except ``v0``).

    ``drive``: the input incl. per-step bias; ``spikes``: 0/1; ``v_seq``: the membrane after
    each step's reset; ``v0``: the state the pre-simulation started from (``[B, ...]``);
    ``threshold``: the threshold broadcastable against a ``[B, ...]`` state (a float when
    layer-wise).
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
    """A correction's answer: the counted run's initial state and/or an output mask (both ``[B, ...]``)."""

    v0: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class SiteCorrection(Savable):
    """Base class of per-input corrections (see the module docstring).

    Subclasses set ``presim_steps`` (>= 1) and ``scope`` (``"layer"`` or ``"network"``) and
    implement :meth:`adjust`. A saved SNN stores the instance attributes (plain data, see
    :class:`Savable`); keep subclasses at module level in an importable module (a plugin)
    so that loading finds the class.

    ``threshold_relative``: set it to True when every quantity the correction compares or
    returns is a multiple of the site's threshold (COS's offset shift, SRP's masks); then
    ``fold_scales`` may fold the threshold into the weights and keep the correction, which makes
    the same decisions in units of the threshold. Otherwise folding refuses the SNN.
    """

    presim_steps: int = 0
    scope: str = "layer"
    threshold_relative: bool = False

    def adjust(self, site: SpikingSite, record: PresimRecord, v0: torch.Tensor) -> Adjustment | None:
        """Decide the counted run's state and mask for every sample of the batch.

        :param site: the :class:`~snnbridge.runtime.SpikingSite`; ``site.neuron.simulate(...)``
            re-simulates its genuine neurons (e.g. from another initial state).
        :param record: what the site saw during the pre-simulation.
        :param v0: the state proposed so far for the counted run (the spec's ``v0``, or what
            earlier corrections returned), ``[B, ...]``.
        :returns: an :class:`Adjustment`, or ``None`` to change nothing.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class DecodeWindow:
    """The counted steps the decoded output averages: steps ``start(T) + 1 .. T``.

    ``start(T) = min(delay, T - keep)`` (never negative): the first ``delay`` counted steps
    are skipped, but at least ``keep`` steps are always averaged. The default averages all
    steps. ``SpikingModel.sweep`` applies the window for every prefix length.
    """

    delay: int = 0
    keep: int = 1

    def __post_init__(self):
        if int(self.delay) < 0 or int(self.keep) < 1:
            raise InputError(f"DecodeWindow needs delay >= 0 and keep >= 1, got delay={self.delay}, keep={self.keep}.")
        object.__setattr__(self, "delay", int(self.delay))
        object.__setattr__(self, "keep", int(self.keep))

    def start(self, timesteps: int) -> int:
        """Counted steps skipped before averaging, for a run of ``timesteps`` counted steps."""
        return max(0, min(self.delay, int(timesteps) - self.keep))


class TimestepMismatchWarning(UserWarning):
    """A T-specific correction (calibrated for one T) is run for another T."""


class TimestepCheck(Savable):
    """``snn.timestep_checks`` entry: ``plugin``'s corrections hold for ``timesteps`` counted steps only.

    ``policy``: ``"warn"`` (a :class:`TimestepMismatchWarning`), ``"error"`` (an
    :class:`~snnbridge.errors.InputError`) or ``"ignore"``.
    """

    def __init__(self, plugin: str, timesteps: int, policy: str = "warn"):
        if policy not in MISMATCH_POLICIES:
            raise InputError(f"TimestepCheck policy must be one of {', '.join(MISMATCH_POLICIES)}, got {policy!r}.")
        self.plugin, self.timesteps, self.policy = plugin, int(timesteps), policy

    def __call__(self, snn, timesteps: int) -> None:
        """Run before every run of ``timesteps`` counted steps: warn, refuse or pass (``policy``)."""
        if snn is not None:
            check_runnable(snn, timesteps)  # a run the per-step tables cannot cover is refused, whatever the policy
        if timesteps == self.timesteps or self.policy == "ignore":
            return
        msg = (f"{self.plugin}: the corrections were calibrated for T = {self.timesteps} steps but the SNN is run for "
               f"T = {timesteps}; data-driven corrections are T-specific. Convert again with timesteps={timesteps} "
               f"(or the plugin's 'timesteps' option) for this T.")
        if self.policy == "error":
            raise InputError(msg)
        warnings.warn(msg, TimestepMismatchWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"TimestepCheck({self.plugin!r}, T={self.timesteps}, {self.policy})"


def longest_run(snn) -> int | None:
    """The most counted steps ``snn`` can run: the shortest per-step bias table of its sites (None: any T)."""
    rows = [s.max_timesteps for s in snn.specs.values() if s.max_timesteps is not None]
    return min(rows) if rows else None


def check_runnable(snn, timesteps: int) -> None:
    """Refuse, before any simulation, a run longer than ``snn``'s per-step bias tables (a :class:`TimestepError`)."""
    longest = longest_run(snn)
    if longest is None or int(timesteps) <= longest:
        return
    plugins = [c.plugin for c in getattr(snn, "timestep_checks", ()) if isinstance(c, TimestepCheck)]
    who = f" ({', '.join(dict.fromkeys(plugins))}: T-specific)" if plugins else ""
    raise TimestepError(
        f"this SNN can run at most T = {longest} counted steps: its per-step bias tables{who} were calibrated for "
        f"T = {longest}, and T = {timesteps} was asked for. Run it for T <= {longest}, or convert again with "
        f"timesteps={timesteps} (snnbridge convert --timesteps {timesteps}) for the longer run.")


def timestep_options() -> list[Option]:
    """The options every T-specific plugin gets (declared once, here)."""
    return [
        Option("timesteps", int, None, "T the corrections are calibrated for (default: the conversion's T)",
               nullable=True, check=lambda t: t is None or t >= 1, check_help="timesteps >= 1"),
        Option("on_mismatch", str, "warn", "when the SNN runs for another T than calibrated: warn, error or ignore",
               choices=MISMATCH_POLICIES),
    ]


def calibrated_timesteps(options: dict[str, Any], conversion_timesteps: int) -> int:
    """The T a T-specific plugin calibrates for: its ``timesteps`` option, else the conversion's T."""
    return int(options.get("timesteps") or conversion_timesteps)
