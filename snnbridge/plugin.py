"""Plugin metadata (:class:`PluginInfo`) and the documented set of capabilities.

A capability is a name for one thing a plugin contributes to a conversion ("writes every
site's threshold", "writes the base initial potential", ...). Recipes are validated on
capabilities before any work is done, and the core answers "which plugin of this recipe
provides X" (:meth:`snnbridge.recipe.Recipe.active_provider`), so no plugin has to read
another plugin's options to know what it may do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: every capability the core knows, with its meaning (third-party plugins may add their own
#: through ``PluginInfo(defines={...})``)
CAPABILITIES: dict[str, str] = {
    "threshold": "estimates the threshold of every activation site (one provider per recipe)",
    "activation": "replaces the ANN's activations for training, see snnbridge.prepare (one provider per recipe)",
    "v0_base": "writes the base initial membrane potential of every neuron, e.g. theta/2 (one provider per recipe)",
    "step_shift": "adds a constant per-step input shift, e.g. +theta/(2T) (one provider per recipe). It realizes the "
                  "same half step as a theta/2 initial potential, so a *fallback* step_shift is inactive whenever the "
                  "recipe has a v0_base",
    "quantized_ann": "the source ANN was trained with a quantized activation (QCFS), so per-neuron targets are known",
    "offset_calibration": "per-input shift of the initial potential after a pre-simulation (COS)",
    "residual_mask": "per-input output masks after a network warm-up (SRP)",
    "temporal_bias": "per-step, per-channel input bias tables (FTBC)",
    "backend": "realizes NeuronSpecs with a framework's neurons (adapters)",
    "training_loss": "the base loss for training or fine-tuning SNNs, see snnbridge.training_loss (one provider per "
                     "recipe; without one the base is cross-entropy on the time-mean of the outputs)",
    "loss_term": "adds a term (e.g. a regularizer) to the recipe's base training loss, see snnbridge.training_loss",
    "surrogate": "a surrogate gradient of the spike function (one provider per recipe: neurons take one)",
}

#: capabilities at most one plugin of a recipe may provide
EXCLUSIVE_CAPABILITIES = frozenset({"threshold", "activation", "v0_base", "step_shift", "training_loss",
                                    "surrogate"})

#: a *fallback* provider of the key is inactive when the recipe has an active provider of any value
YIELDS_TO: dict[str, tuple[str, ...]] = {"step_shift": ("v0_base",)}

KINDS = ("method", "backend", "training")


@dataclass(frozen=True)
class PluginInfo:
    """What a plugin is and how it combines with others (returned by ``snnbridge_plugin_info``).

    * ``summary``: one line for ``snnbridge plugins``; ``reference``: the paper (and official code).
    * ``kind``: ``"method"`` (conversion method), ``"backend"`` (adapter) or ``"training"``.
    * ``provides``: capabilities the plugin supplies (see :data:`CAPABILITIES`); those in
      :data:`EXCLUSIVE_CAPABILITIES` may have one provider per recipe.
    * ``fallback``: capabilities supplied only when no other recipe plugin provides them.
    * ``requires``: capabilities some *earlier* recipe plugin must provide.
    * ``conflicts``: capabilities or plugin names this plugin cannot be combined with.
    * ``after``: capabilities whose providers must come *earlier* in the recipe.
    * ``needs_data``: the plugin needs calibration batches; a callable ``options -> bool`` (or
      ``-> str``, the reason, shown in the error when no data is given) when that depends on
      the options.
    * ``t_specific``: the plugin's corrections hold for one T only. The core then adds the
      shared options ``timesteps`` (the T to calibrate for; default the conversion's T) and
      ``on_mismatch`` (``warn``/``error``/``ignore`` when the SNN runs another T), and after
      the plugin's ``snnbridge_correct_error`` attaches a
      :class:`~snnbridge.corrections.TimestepCheck` to the SNN.
    * ``aliases``: other names the plugin answers to in recipes (old names kept for users' files).
    * ``defines``: new capability names this plugin introduces, with their meaning.
    """

    summary: str
    kind: str = "method"
    reference: str = ""
    provides: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    needs_data: bool | Callable[[Mapping[str, Any]], bool | str] = False
    t_specific: bool = False
    aliases: tuple[str, ...] = ()
    defines: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"PluginInfo.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("provides", "fallback", "requires", "conflicts", "after", "aliases"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not (isinstance(self.needs_data, bool) or callable(self.needs_data)):
            raise ValueError("PluginInfo.needs_data must be a bool or a callable options -> bool")
        object.__setattr__(self, "defines", dict(self.defines))
        shadowed = sorted(set(self.defines) & set(CAPABILITIES))
        if shadowed:
            raise ValueError(f"PluginInfo.defines redefines the core capabilities {', '.join(shadowed)}; use new names")

    def data_needed(self, options: Mapping[str, Any]) -> bool | str:
        """Whether the plugin needs calibration data with these (complete) options (a str: yes, and why)."""
        need = self.needs_data(options) if callable(self.needs_data) else self.needs_data
        return need if isinstance(need, str) and need else bool(need)

    def capability_names(self) -> set[str]:
        """Every capability this info refers to (conflicts may also name plugins and are not included)."""
        return set(self.provides) | set(self.fallback) | set(self.requires) | set(self.after)
