"""snnbridge: convert trained PyTorch ANNs into spiking neural networks of real neurons.

Quick start::

    import snnbridge
    snn = snnbridge.convert(ann, recipe=["maxnorm"], calibration=loader,
                            backend="spikingjelly", timesteps=32)
    logits = snn(images)            # runs T steps, returns the mean output
    curve = snn.sweep(images)       # [T, B, classes]: output after 1..T steps

Plugin authors: see :mod:`snnbridge.hookspecs`.
"""

from .convert import convert
from .diagnose import layer_report, plot_layer_report
from .errors import (BackendError, CalibrationError, InputError, MissingRequirementError, OptionError,
                     PluginConflictError, PluginLoadError, RecipeParseError, SnnbridgeError, UnknownPluginError,
                     UnsupportedModelError)
from .graph import PreparedGraph, prepare_graph
from .hookspecs import hookimpl
from .io import load, save
from .neurons import NeuronLayer, SimResult, simulate
from .options import Option
from .plugin import PluginInfo
from .plugin_manager import get_registry
from .prepare import prepare
from .recipe import RunConfig, build_recipe, load_config, parse_config
from .runtime import SpikingModel
from .sites import SiteInfo
from .spec import NeuronSpec

__version__ = "0.1.0"

__all__ = [
    "convert", "layer_report", "plot_layer_report", "prepare", "prepare_graph", "simulate", "build_recipe", "load_config", "parse_config", "get_registry",
    "hookimpl", "NeuronSpec", "NeuronLayer", "SimResult", "Option", "PluginInfo", "SiteInfo", "SpikingModel",
    "PreparedGraph", "RunConfig", "save", "load",
    "SnnbridgeError", "PluginLoadError", "UnknownPluginError", "OptionError", "PluginConflictError",
    "MissingRequirementError", "RecipeParseError", "UnsupportedModelError", "InputError", "CalibrationError",
    "BackendError", "__version__",
]
