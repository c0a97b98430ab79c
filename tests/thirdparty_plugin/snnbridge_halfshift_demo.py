"""``halfshift``: a minimal third-party snnbridge method plugin (a demo, used by the tests).

Sets every site's initial membrane potential to ``fraction * threshold`` (0.5 gives the
familiar theta/2 initialisation). It is registered exactly like the built-in plugins, in
this package's pyproject.toml::

    [project.entry-points.snnbridge]
    halfshift = "snnbridge_halfshift_demo"

Recipe: ``["maxnorm", {"halfshift": {"fraction": 0.5}}]``.
"""

from snnbridge import Option, PluginInfo, hookimpl


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="initial membrane potential v0 = fraction * threshold (third-party demo)",
                      reference="snnbridge test suite", provides=("v0_base",), after=("threshold",))


@hookimpl
def snnbridge_add_options():
    return [Option("fraction", float, 0.5, "v0 as a fraction of the threshold",
                   check=lambda f: 0.0 <= f <= 1.0, check_help="0 <= fraction <= 1")]


@hookimpl
def snnbridge_configure_neuron(spec, options):
    return spec.replace(v0=spec.threshold * options["fraction"])
