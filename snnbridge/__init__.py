"""snnbridge: convert trained PyTorch ANNs into spiking neural networks of real neurons.

Quick start::

    import snnbridge
    snn = snnbridge.convert(ann, recipe=["maxnorm"], calibration=loader,
                            backend="spikingjelly", timesteps=32)
    logits = snn(images)            # runs T steps, returns the mean output
    curve = snn.sweep(images)       # [T, B, classes]: output after 1..T steps

Plugin authors: :mod:`snnbridge.hookspecs` is the manual; everything a plugin needs is a
name exported here (``snnbridge.__all__``).
"""

from . import channels, distributed, robustness
from .context import ConversionContext
from .convert import convert
from .corrections import Adjustment, DecodeWindow, PresimRecord, SiteCorrection, TimestepCheck, TimestepMismatchWarning
from .diagnose import layer_report
from .energy import energy
from .errors import (
                          BackendError,
                          CalibrationError,
                          InputError,
                          MissingRequirementError,
                          ModelLoadError,
                          OptionError,
                          PluginConflictError,
                          PluginError,
                          PluginLoadError,
                          RecipeParseError,
                          SnnbridgeError,
                          SnnFileError,
                          TimestepError,
                          UnknownPluginError,
                          UnsupportedModelError,
)
from .evaluate import accuracy_curve, ann_accuracy
from .factory import NeuronFactory, make_neuron_factory
from .feeding import Feed
from .folding import fold_scales, is_folded
from .graph import ConversionGraph, trace_for_conversion
from .hookspecs import hookimpl
from .io import load, save
from .neurons import NeuronLayer, SimResult
from .nir_export import export_nir
from .observers import (
                          EMAMaxObserver,
                          EMAObserver,
                          MaxObserver,
                          MeanObserver,
                          Observer,
                          PercentileObserver,
                          ReservoirObserver,
                          percentile,
)
from .options import Option
from .plots import plot_accuracy, plot_layer_report
from .plugin import CAPABILITIES, PluginInfo
from .plugin_manager import PluginLoadWarning, get_registry
from .prepare import prepare
from .recipe import DataConfig, Recipe, RecipeEntry, RunConfig, build_recipe, load_config, parse_config
from .recording import Recording, SiteTrace, record
from .report import report
from .robustness import RobustnessReport, fgsm, pgd, uniform_noise
from .robustness import evaluate as evaluate_robustness
from .runtime import SpikingModel, SpikingSite
from .simulation import simulate
from .sites import SiteInfo
from .spec import NeuronSpec
from .surrogates import Surrogate, firing_rule, surrogate
from .training import TrainingLoss, training_loss
from .tune import TuneResult, tune

__version__ = "0.1.0"

#: old names, kept for existing code (same objects)
prepare_graph = trace_for_conversion
PreparedGraph = ConversionGraph

__all__ = [
    # conversion and running
    "convert", "prepare", "simulate", "trace_for_conversion", "ConversionGraph", "SpikingModel", "SpikingSite",
    "save", "load", "record", "accuracy_curve", "ann_accuracy", "layer_report", "plot_accuracy", "plot_layer_report",
    "fold_scales", "is_folded", "export_nir",
    "report",
    "energy",
    "distributed",
    "tune", "TuneResult",
    # training
    "training_loss", "TrainingLoss",
    "surrogate", "Surrogate", "firing_rule",
    # robustness (snnbridge.robustness)
    "robustness", "evaluate_robustness", "fgsm", "pgd", "uniform_noise", "RobustnessReport",
    # recipes and plugins
    "build_recipe", "load_config", "parse_config", "Recipe", "RecipeEntry", "RunConfig", "DataConfig",
    "get_registry", "hookimpl", "PluginInfo", "CAPABILITIES", "Option", "PluginLoadWarning",
    # what plugins work with
    "NeuronSpec", "NeuronLayer", "SimResult", "NeuronFactory", "make_neuron_factory", "SiteInfo", "ConversionContext",
    "channels",
    "Observer", "MaxObserver", "MeanObserver", "EMAObserver", "EMAMaxObserver", "ReservoirObserver",
    "PercentileObserver", "percentile",
    "SiteCorrection", "PresimRecord", "Adjustment", "DecodeWindow", "TimestepCheck", "TimestepMismatchWarning",
    "Recording", "SiteTrace", "Feed",
    # errors
    "SnnbridgeError", "PluginLoadError", "PluginError", "UnknownPluginError", "OptionError", "PluginConflictError",
    "MissingRequirementError", "RecipeParseError", "UnsupportedModelError", "InputError", "CalibrationError",
    "BackendError", "ModelLoadError", "SnnFileError", "TimestepError",
    "__version__",
]
