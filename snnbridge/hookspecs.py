"""The plugin author's manual: every hook snnbridge calls, in pipeline order.

A plugin is a module (or object) with functions decorated by ``snnbridge.hookimpl`` and
named like the specs below. It is registered through the entry-point group ``snnbridge``
(``[project.entry-points.snnbridge] mymethod = "mypackage.mymethod"``) - exactly how the
built-in methods and backends are registered - or passed as an object in Python::

    snnbridge.convert(ann, recipe=[my_plugin_module, "opi"], ...)

Rules every plugin follows (DESIGN.md):

* **Recipe order.** The core calls a stage's hook on the recipe's plugins one at a time,
  in recipe order, passing each its own validated ``options`` dict. A plugin that is
  installed but not in the recipe is never called, except for the two discovery hooks
  ``snnbridge_plugin_info`` / ``snnbridge_add_options`` and ``snnbridge_claim_module``.
* **Arguments.** An implementation may accept any *subset* of a spec's arguments (pluggy
  checks the names at registration: a misspelled argument or hook name is an error).
* **Never mutate the user's model**; the core hands plugins copies. Method plugins edit
  :class:`~snnbridge.spec.NeuronSpec` values and the SNN copy only, and import no SNN
  framework: backends are adapters' business.
* **Bad input** raises a :mod:`snnbridge.errors` class with a message that says the fix.

Pipeline (DESIGN.md): recipe validation (capabilities, then each plugin's
``check_recipe``) -> ``prepare`` (activation replacement, before training) ->
trace / fold BN -> observe -> ``estimate_threshold`` -> ``configure_neuron`` ->
``make_neuron`` (backend) -> ``correct_error`` -> runtime. Training-side hooks
(``training_loss``, ``surrogate``) are used when fine-tuning a converted SNN.
"""

from __future__ import annotations

import pluggy

PROJECT = "snnbridge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- discovery -----------------------------------------------------------------------------------------


@hookspec
def snnbridge_plugin_info():
    """Describe the plugin: return a :class:`snnbridge.plugin.PluginInfo`.

    The info's capabilities drive recipe validation before any work is done:

    * ``provides``: capabilities the plugin supplies. ``threshold``, ``activation``,
      ``v0_base`` (the base initial potential, e.g. theta/2) and ``step_shift`` (a constant
      per-step input shift) are *exclusive*: two plugins of one recipe providing the same one
      is a :class:`~snnbridge.errors.PluginConflictError` that names both. ``backend`` marks
      an adapter.
    * ``fallback``: capabilities supplied only when no other recipe plugin provides them
      (e.g. a correction method's own threshold search).
    * ``requires``: capabilities some *earlier* recipe plugin must provide.
    * ``conflicts``: capabilities (or plugin names) this plugin cannot be combined with.
    * ``after``: capabilities whose providers must come *earlier* in the recipe.
    * ``needs_data``: the plugin needs calibration batches.
    """


@hookspec
def snnbridge_add_options():
    """Declare the plugin's options: return a list of :class:`snnbridge.options.Option`.

    Used to validate recipes (unknown names get a "did you mean", wrong types and ranges a
    precise message), to fill defaults, and by ``snnbridge plugins``.
    """


@hookspec
def snnbridge_check_recipe(recipe, options):
    """Option-dependent recipe rules, checked with the rest of the recipe *before any work*.

    Called once per recipe plugin, in recipe order, after the capability rules of
    ``snnbridge_plugin_info`` passed. ``recipe`` is the validated
    :class:`~snnbridge.recipe.Recipe` (``recipe.names``, ``recipe.provider(capability)``);
    ``options`` are this plugin's complete options. Raise a :mod:`snnbridge.errors` class
    (usually :class:`~snnbridge.errors.PluginConflictError`) whose message names the fix when
    the chosen options do not fit the other plugins; return nothing otherwise.
    """


@hookspec(firstresult=True)
def snnbridge_claim_module(module):
    """Tell the core that ``module`` is an activation to convert into neurons.

    Return ``None`` for modules you do not own, else an object with optional attributes
    ``kind`` (str) and ``clip_max`` (float or None); it is stored as ``SiteInfo.claim``.
    Claimed modules are kept as leaves when tracing. Called on *every* registered plugin
    (a model trained with a plugin's activation stays convertible with any recipe).
    """


# -- before training -----------------------------------------------------------------------------------


@hookspec
def snnbridge_replace_activation(site, module, options):
    """Activation replacement for training (used by ``snnbridge.prepare``).

    ``site`` is a :class:`~snnbridge.sites.SiteInfo` of an activation found in the ANN and
    ``module`` the activation module currently there (``nn.ReLU()`` for functional calls).
    Return the module to train with instead (e.g. a QCFS activation), or ``None`` to leave
    it. The first recipe plugin that returns a module wins; recipes with two providers of
    ``activation`` are refused.
    """


# -- conversion ----------------------------------------------------------------------------------------


@hookspec
def snnbridge_estimate_threshold(ctx, options):
    """Return ``{site_name: threshold}`` for every site of ``ctx.sites``.

    A threshold is a positive float or a 1-D per-channel tensor. ``ctx`` is a
    :class:`snnbridge.context.ConversionContext`: use ``ctx.collect(...)`` for activation
    statistics over the calibration batches (true global max, reservoir samples, ...).
    Only the recipe's threshold provider is called (or its ``fallback`` provider).
    """


@hookspec
def snnbridge_configure_neuron(site, spec, ctx, options):
    """Adjust one site's :class:`~snnbridge.spec.NeuronSpec`; return the new spec or ``None``.

    Called for every site, for every recipe plugin in recipe order, after thresholds are
    set (``spec.threshold``). Use ``spec.replace(v0=..., step_bias=...)``.
    """


@hookspec(firstresult=True)
def snnbridge_make_neuron(spec, options):
    """Adapters only: build the neuron layer realizing ``spec``.

    Return an instance of :class:`snnbridge.neurons.NeuronLayer` whose ``simulate`` runs
    genuine framework neurons. Only the backend named in ``convert(backend=...)`` is asked,
    with its own validated ``options`` (``backend_options``). Raise
    :class:`~snnbridge.errors.BackendError` when the backend cannot run here.
    """


@hookspec
def snnbridge_correct_error(snn, ctx, options):
    """Post-conversion error correction, in recipe order.

    ``snn`` is the :class:`snnbridge.runtime.SpikingModel` being built (already runnable);
    ``ctx`` gives the untouched reference ANN, sites and calibration batches. Change
    specs with ``snn.set_spec(site, spec)`` (neurons are rebuilt by the backend), edit the
    SNN copy's parameters, or attach runtime corrections. Return nothing.
    """


# -- training side ---------------------------------------------------------------------------------------


@hookspec
def snnbridge_training_loss(options):
    """Return a loss callable ``loss(outputs_per_step [T, B, K], targets) -> scalar`` or ``None``."""


@hookspec
def snnbridge_surrogate(options):
    """Return a surrogate spike function (``torch.autograd.Function``-style callable on ``v - theta``) or ``None``."""
