"""Conversion and training methods, one plugin module per paper.

Plugins edit :class:`snnbridge.NeuronSpec` values and the SNN copy through the hooks of
:mod:`snnbridge.hookspecs`; they never import an SNN framework, so each method runs on
every backend. Installed as ``snnbridge.plugins.<method>`` and registered through the
``snnbridge`` entry-point group like any third-party plugin.
"""
