"""The plugin author's manual: every hook snnbridge calls, grouped by stage, in pipeline order.

A plugin is a module (or an object) with functions decorated by ``snnbridge.hookimpl`` and
named like the specs below. Register it through the entry-point group ``snnbridge`` of your
package - exactly how snnbridge's own methods and backends are registered::

    [project.entry-points.snnbridge]
    mymethod = "my_package.mymethod"

or pass the object itself in a recipe: ``snnbridge.convert(ann, [my_plugin, "opi"], ...)``.
``examples/plugin_correction/`` is a complete third-party package (a per-input correction
and a T-specific bias table written against the public API only, tested by the suite).

Rules
-----
* **Recipe order.** For each stage the core calls the hook of the recipe's plugins one at a
  time, in recipe order, each with its own validated ``options`` dict. A plugin that is
  installed but not in the recipe is never called, except by the discovery hooks
  (:func:`snnbridge_plugin_info`, :func:`snnbridge_add_options`), by
  :func:`snnbridge_claim_module` and by :func:`snnbridge.tune` (:func:`snnbridge_tune_variants`).
* **Arguments.** An implementation may accept any *subset* of a spec's arguments. pluggy
  checks the names when the plugin is registered: a misspelled hook or argument marks the
  plugin broken (reported by name; the other plugins keep working).
* **Never mutate the user's model.** The core hands plugins copies. Method plugins edit
  :class:`~snnbridge.spec.NeuronSpec` values and the SNN copy only, import no SNN framework
  and use only names exported by ``snnbridge`` (``snnbridge.__all__``).
* **Attachments must pickle.** Whatever a plugin attaches to the SNN (corrections, decode
  windows, timestep checks) is saved with it: use module-level classes, not lambdas or
  nested functions.
* **Bad input** raises a :mod:`snnbridge.errors` class whose message says the fix. Any
  other exception escaping a hook is re-raised as :class:`~snnbridge.errors.PluginError`
  naming the plugin and the hook.

Pipeline (:func:`snnbridge.convert`)
------------------------------------
1. recipe validation: options (:func:`snnbridge_add_options`), capabilities
   (:func:`snnbridge_plugin_info`), then each plugin's :func:`snnbridge_check_recipe`;
2. trace a copy of the ANN, fold BN, find activation sites (:func:`snnbridge_claim_module`);
3. thresholds: :func:`snnbridge_estimate_threshold` of the recipe's threshold provider;
4. neurons: :func:`snnbridge_configure_neuron` of every recipe plugin, site by site;
5. backend: :func:`snnbridge_make_neuron` of the chosen adapter, per site;
6. corrections: :func:`snnbridge_correct_error` of every recipe plugin;
7. the :class:`~snnbridge.runtime.SpikingModel` runs T steps.

Before conversion, :func:`snnbridge.prepare` calls :func:`snnbridge_replace_activation` (an
ANN trained for conversion); after it, ``snnbridge_training_loss`` (through
:func:`snnbridge.training_loss`) and ``snnbridge_surrogate`` (through :func:`snnbridge.surrogate`
and ``snn.set_surrogate``; adapters wrap it with :func:`snnbridge_wrap_surrogate`) serve
fine-tuning.

What a plugin works with
------------------------
``ctx`` (:class:`~snnbridge.context.ConversionContext`): ``ctx.ann`` the untouched
reference ANN (traced; compare against it, never edit it), ``ctx.sites`` (name ->
:class:`~snnbridge.sites.SiteInfo`, topological order), ``ctx.timesteps`` (T),
``ctx.recipe`` (:class:`~snnbridge.recipe.Recipe`: ``active_provider(capability)``
answers who writes the threshold, v0, the per-step shift ...), ``ctx.batches()`` /
``ctx.take(n)`` (calibration data), ``ctx.collect(observer)`` (statistics, shared and
cached: :mod:`snnbridge.observers`), ``ctx.hooks(fn)`` (read or replace site outputs during
ANN forwards), ``ctx.site_activations(x)``, ``ctx.usable_threshold(...)``,
``ctx.timesteps_for(options)``, ``ctx.plugin_data`` (state a plugin hands from one of its
hooks to a later one) and ``ctx.report["notes"]``.

Distributed conversions (``torch.distributed``, :mod:`snnbridge.distributed`): every rank
runs the hooks on its own shard; batch i is the union of the ranks' batches i.
``ctx.collect`` reduces observers itself; a plugin's own loop reduces what it computes with
``ctx.all_mean(mean, count)``, ``ctx.all_sum(t)``, ``ctx.all_max(t)`` and ``ctx.all_gather(t)``
(``ctx.world_size`` / ``ctx.rank``; all are the identity in one process), so that every rank
ends with the same SNN (the core checks a checksum and names a plugin that did not).

``snn`` (:class:`~snnbridge.runtime.SpikingModel`): ``snn.sites`` (name ->
:class:`~snnbridge.runtime.SpikingSite` with ``spec``, ``neuron`` and ``corrections``),
``snn.set_spec(name, spec)``, ``snn.run(x, timesteps)`` / ``snn(x)``,
``snn.run(x, before_fire=fn)`` (every site's whole input sequence, in order, before it fires:
calibrate all sites of a batch in one run),
``with snn.record(sites, keep=...)`` (:mod:`snnbridge.recording`),
``snn.feeding_layer(name)`` (:mod:`snnbridge.feeding`), ``snn.decode_window``
(:class:`~snnbridge.corrections.DecodeWindow`), ``snn.timestep_checks``.

Capabilities
------------
See :data:`snnbridge.plugin.CAPABILITIES` (and ``snnbridge plugins --all``): ``threshold``,
``activation``, ``v0_base``, ``step_shift``, ``training_loss`` (the base loss) and
``surrogate`` are exclusive (one provider per recipe); ``quantized_ann``,
``offset_calibration``, ``residual_mask``, ``temporal_bias``, ``backend``, ``loss_term`` (a
term added to the base loss). A plugin may define new ones (``PluginInfo(defines={...})``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .context import ConversionContext
    from .neurons import NeuronLayer
    from .options import Option
    from .plugin import PluginInfo
    from .recipe import Recipe
    from .runtime import SpikingModel
    from .sites import SiteInfo
    from .spec import NeuronSpec
    from .surrogates import Surrogate

PROJECT = "snnbridge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: hook -> the pipeline stage it implements, in pipeline order (discovery hooks have none)
HOOK_STAGES: dict[str, str] = {
    "snnbridge_claim_module": "claim",
    "snnbridge_replace_activation": "activation",
    "snnbridge_estimate_threshold": "threshold",
    "snnbridge_configure_neuron": "configure",
    "snnbridge_make_neuron": "backend",
    "snnbridge_correct_error": "correct",
    "snnbridge_training_loss": "loss",
    "snnbridge_surrogate": "surrogate",
}
DISCOVERY_HOOKS = ("snnbridge_plugin_info", "snnbridge_add_options", "snnbridge_check_recipe",
                   "snnbridge_tune_variants")


# =============================================================================================
# discovery (called on every installed plugin)
# =============================================================================================


@hookspec
def snnbridge_plugin_info() -> PluginInfo:
    """Describe the plugin (required of every plugin).

    Called once, when the plugin is loaded. The capabilities of the returned info drive
    recipe validation before any work is done; see :class:`snnbridge.plugin.PluginInfo`.

    :returns: a :class:`~snnbridge.plugin.PluginInfo`.
    """


@hookspec
def snnbridge_add_options() -> list[Option]:
    """Declare the plugin's options.

    Called once, when the plugin is loaded. Used to validate recipes (unknown names get a
    "did you mean", wrong types and ranges a precise message), to fill defaults, and by
    ``snnbridge plugins``. A T-specific plugin (``PluginInfo(t_specific=True)``) must not
    declare ``timesteps`` or ``on_mismatch``: the core adds them.

    :returns: a list of :class:`~snnbridge.options.Option`.
    """


@hookspec
def snnbridge_check_recipe(recipe: Recipe, options: dict[str, Any]) -> None:
    """Check rules that depend on the plugin's options, before any work.

    Called once per recipe plugin, in recipe order, after the capability rules passed.

    :param recipe: the validated recipe (``recipe.names``, ``recipe.active_provider(cap)``).
    :param options: this plugin's complete options.
    :returns: nothing; raise a :mod:`snnbridge.errors` class (usually
        :class:`~snnbridge.errors.PluginConflictError`) whose message names the fix.
    """


@hookspec
def snnbridge_tune_variants() -> list[dict[str, Any]]:
    """Option sets of this plugin worth trying when :func:`snnbridge.tune` searches for the best recipe.

    Called by :func:`snnbridge.tune` on every installed method plugin, when it builds its
    candidate recipes. Each dict is given as the plugin's options in a candidate (and
    validated like any recipe's), so ``{}`` means the defaults; list the cheapest first:
    tune tries candidates cheap-first and stops when its time budget is spent. In a stack
    of plugins only one plugin at a time deviates from its first variant. Without this
    hook the plugin is tried with its defaults only.

    :returns: a non-empty list of option dicts, e.g. ``[{}, {"percentile": 99.99}]``.
    """


@hookspec(firstresult=True)
def snnbridge_claim_module(module: nn.Module) -> Any:
    """Tell the core that ``module`` is an activation to convert into neurons.

    Called on *every* installed plugin for the modules of a model being traced (a model
    trained with a plugin's activation stays convertible with any recipe). The first claim
    wins. Claimed modules are kept as leaves when tracing.

    :param module: a submodule of the model being traced.
    :returns: ``None`` for modules you do not own, else an object with optional attributes
        ``kind`` (str), ``clip_max`` (float or None) and, for a quantized activation,
        ``levels`` (int: the number of output steps per threshold, e.g. QCFS's L); it is
        stored as ``SiteInfo.claim`` and ``levels`` is read back as ``SiteInfo.levels``.
    """


# =============================================================================================
# before training: snnbridge.prepare
# =============================================================================================


@hookspec
def snnbridge_replace_activation(site: SiteInfo, module: nn.Module, options: dict[str, Any]) -> nn.Module | None:
    """Swap one activation for the activation to train with (e.g. QCFS).

    Called by :func:`snnbridge.prepare` for every activation call site, on the recipe's
    plugins in order until one returns a module.

    :param site: the activation site found in the ANN (name, kind, clip bound).
    :param module: the activation module there now (``nn.ReLU()`` for functional calls).
    :param options: this plugin's options.
    :returns: the module to train with, or ``None`` to leave the site.
    """


# =============================================================================================
# conversion: snnbridge.convert
# =============================================================================================


@hookspec
def snnbridge_estimate_threshold(ctx: ConversionContext, options: dict[str, Any]) -> dict[str, Any]:
    """Estimate every site's threshold.

    Called on the recipe's threshold provider only (``recipe.active_provider("threshold")``:
    the plugin that provides ``threshold``, else the one that offers it as a fallback).

    :param ctx: the conversion context: ``ctx.collect(observer)`` for statistics over the
        calibration batches, ``ctx.usable_threshold(...)`` to replace dead channels.
    :param options: this plugin's options.
    :returns: ``{site_name: threshold}`` for every site of ``ctx.sites``; a threshold is a
        positive float or a 1-D tensor with one value per channel.
    """


@hookspec
def snnbridge_configure_neuron(site: SiteInfo, spec: NeuronSpec, ctx: ConversionContext,
                               options: dict[str, Any]) -> NeuronSpec | None:
    """Adjust one site's neuron spec (initial potential, per-step bias ...).

    Called for every site, for every recipe plugin in recipe order, after the thresholds are
    set; each plugin sees the spec the previous one returned.

    :param site: the site (``site.name``, ``site.shape``, ``site.claim``).
    :param spec: the site's current spec; change it with ``spec.replace(...)``.
    :param ctx: the conversion context (``ctx.recipe.active_provider("v0_base")`` ...).
    :param options: this plugin's options.
    :returns: the new spec, or ``None`` to keep it.
    """


@hookspec(firstresult=True)
def snnbridge_make_neuron(spec: NeuronSpec, options: dict[str, Any]) -> NeuronLayer:
    """Adapters only: build the neuron layer realizing ``spec``.

    Called on the backend named in ``convert(backend=...)`` only, once per site (and again
    when a plugin calls ``snn.set_spec``).

    :param spec: what to realize: threshold (scalar or per channel), initial potential; the
        per-step bias is added to the input by the core.
    :param options: the backend's validated options (``backend_options``).
    :returns: a :class:`~snnbridge.neurons.NeuronLayer` whose ``simulate`` runs genuine
        framework neurons. Raise :class:`~snnbridge.errors.BackendError` when the backend
        cannot run here. Optionally it overrides ``framework_hooks`` / ``replay_hooks`` so the
        framework's monitors get one record of the counted steps per run (``snnbridge.neurons``).
    """


@hookspec
def snnbridge_correct_error(snn: SpikingModel, ctx: ConversionContext, options: dict[str, Any]) -> None:
    """Correct the converted SNN, in recipe order.

    Called for every recipe plugin, after the neurons are built; the SNN is already
    runnable. A correction may change specs (``snn.set_spec``; the backend rebuilds the
    neurons), edit the SNN copy's parameters (``snn.feeding_layer(name).add_bias(...)``),
    attach per-input :class:`~snnbridge.corrections.SiteCorrection` objects to
    ``snn.sites[name].corrections``, or set ``snn.decode_window``. For a T-specific plugin
    the core then attaches its :class:`~snnbridge.corrections.TimestepCheck`.

    :param snn: the SNN being built.
    :param ctx: the conversion context; ``ctx.ann`` is the untouched reference ANN.
    :param options: this plugin's options.
    :returns: nothing.
    """


# =============================================================================================
# training side
# =============================================================================================


@hookspec
def snnbridge_training_loss(options: dict[str, Any], base: Callable[..., Any] | None) -> Callable[..., Any]:
    """Build this plugin's part of a training loss (called by :func:`snnbridge.training_loss`).

    Called once per loss plugin of the recipe, when the loss is built. The plugin's
    capability says its role:

    * a **base loss** (``provides=("training_loss",)``, at most one per recipe, e.g. ``tet``)
      returns a complete loss; ``base`` is ``None``;
    * a **term** (``provides=("loss_term",)``, e.g. ``gsr``) returns a loss that calls
      ``base`` and adds its own term (``base(...) + lam * R``).

    The core builds the base first (the recipe's base-loss plugin, else cross-entropy on the
    time-mean of the outputs), then calls the terms in recipe order, each receiving the loss
    built so far, wherever the base plugin stands in the recipe. Training plugins that do not
    implement this hook (a surrogate) are skipped.

    The loss protocol: ``loss(outputs, targets, *, model=None, inputs=None) -> 0-dim tensor``.
    ``outputs`` are per-step logits ``[T, B, K]`` (time first: ``snn.steps(x)``) or decoded
    ones ``[B, K]`` (``snn(x)``); ``targets`` are class indices ``[B]`` (the core checks
    both before the call). ``model`` (a callable that reruns the network from a fresh state)
    and ``inputs`` (the tensor the outputs were computed from) serve terms that run the model
    again or differentiate w.r.t. the input; raise
    :class:`~snnbridge.errors.MissingRequirementError` when one you need is missing, and
    :class:`~snnbridge.errors.InputError` on outputs you cannot use (a loss that needs
    per-step outputs refuses ``[B, K]``). Do not switch the model between train and eval.

    :param options: this plugin's options.
    :param base: for a term, the base loss to add to (a callable of the protocol above);
        ``None`` for a base loss.
    :returns: the loss callable; an instance of a module-level class, so it pickles.
    """


@hookspec(firstresult=True)
def snnbridge_surrogate(options: dict[str, Any]) -> Surrogate:
    """Build this plugin's surrogate gradient (called by :func:`snnbridge.surrogate`).

    Called once on the recipe's one surrogate plugin (``provides=("surrogate",)``,
    ``kind="training"``), when the surrogate is built. Return an instance of a module-level
    subclass of :class:`snnbridge.Surrogate` that implements ``derivative(x)``: the surrogate of
    ``dH/dx`` at ``x = v - threshold``, a tensor shaped like ``x``. The core owns the rest, the
    same on every backend: the forward is the exact spike ``x >= 0`` (snnbridge's one firing
    rule: ties fire), the backward multiplies the incoming gradient by ``derivative(x)``, and
    the adapters wrap the object for their framework (:func:`snnbridge_wrap_surrogate`).

    * **Randomized derivatives** (``randomized = True``, e.g. LocalZO) are called once per
      backward call of each spike tensor: draw fresh samples per element on every call, from
      ``self.generator(x.device)`` (None = torch's global generator; a seeded generator when
      the surrogate was built with ``seed=``, so a backward is reproducible).
    * Optionally implement ``primitive(x)``, a smooth function whose derivative is
      ``derivative(x)`` (finite-difference checks, SpikingJelly's non-spiking mode).
    * The object must pickle (models holding it are deep-copied): keep plain attributes.
      :func:`snnbridge.save` records it as ``{plugin: options}`` and :func:`snnbridge.load`
      calls this hook again, so the options must determine the surrogate.
    * A surrogate is not a conversion step: the user sets it with ``snn.set_surrogate(...)``.
      Refuse a conversion recipe that names the plugin in ``snnbridge_check_recipe`` (a recipe
      holding a ``kind="method"`` plugin), as ``localzo`` and ``sg`` do.

    :param options: this plugin's validated options.
    :returns: a :class:`snnbridge.Surrogate`.
    """


@hookspec(firstresult=True)
def snnbridge_wrap_surrogate(surrogate: Any) -> Any:
    """Adapters only: the object this framework's neurons take as their surrogate gradient.

    Called on one backend (``snnbridge.surrogate(..., framework=<backend>)`` and
    ``snn.set_surrogate(s)`` on an SNN of that backend), never with ``None``.

    :param surrogate: a :class:`snnbridge.Surrogate`, or an object the user passed to
        ``snn.set_surrogate``: this framework's object (what this hook returned before, or a
        native surrogate of the framework) or another framework's.
    :returns: what :meth:`snnbridge.NeuronLayer.set_surrogate` of this backend's layers takes
        (SpikingJelly: a ``surrogate_function`` module; snnTorch: a ``spike_grad`` callable;
        torch: the :class:`~snnbridge.Surrogate` itself). It must keep the ``>=`` rule (wrap a
        framework surrogate that fires on ``>``, as snnTorch's do) and expose the core
        surrogate it wraps as ``.surrogate``. Raise :class:`~snnbridge.errors.BackendError` for
        another framework's object, naming the fix.
    """


#: every hook name, for "did you mean" on misspelled implementations
HOOKS = tuple(name for name in dict(globals()) if name.startswith("snnbridge_") and callable(globals()[name]))
