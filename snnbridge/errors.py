"""Error classes of snnbridge.

Every error the library raises on bad input is a subclass of :class:`SnnbridgeError`
and its message says what was wrong *and* how to fix it. Catch the base class to
handle all of them; catch a subclass to handle one kind.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SnnbridgeError(Exception):
    """Base class of every error snnbridge raises on purpose."""


class PluginLoadError(SnnbridgeError):
    """A plugin could not be imported or registered (broken entry point, misspelled hook)."""


class PluginError(SnnbridgeError):
    """A plugin failed while running a hook (an unexpected exception, or a result of the wrong type)."""


class UnknownPluginError(SnnbridgeError):
    """A recipe names a plugin that is not installed."""


class OptionError(SnnbridgeError):
    """A plugin option is unknown, of the wrong type, or out of range."""


class PluginConflictError(SnnbridgeError):
    """Two plugins in one recipe cannot be combined (or are in an order that cannot work)."""


class MissingRequirementError(SnnbridgeError):
    """A plugin needs something the recipe (or the call) does not provide."""


class RecipeParseError(SnnbridgeError):
    """A recipe or config file (YAML/TOML) does not parse or has the wrong structure."""


class UnsupportedModelError(SnnbridgeError):
    """The model contains operations that cannot be converted; the message lists each one."""


class InputError(SnnbridgeError):
    """A tensor given to a converted model or a simulation has the wrong shape or non-finite values."""


class TimestepError(InputError):
    """An SNN is asked to run more counted steps than its T-specific corrections (per-step tables) cover."""


class CalibrationError(SnnbridgeError):
    """Calibration data is missing, empty, malformed, or produces non-finite activations."""


class BackendError(SnnbridgeError):
    """A neuron backend is unknown or cannot run here (missing package, CuPy, or GPU)."""


class ModelLoadError(SnnbridgeError):
    """A model factory (``module:factory``) or a checkpoint cannot be imported, built or loaded."""


class SnnFileError(SnnbridgeError):
    """A saved-SNN file is missing, unreadable, from an incompatible version, or does not fit the given model."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' suffix naming the closest choices, or '' if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
