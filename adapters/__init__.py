"""Neuron backends (adapters): each maps :class:`snnbridge.NeuronSpec` onto one framework's neurons.

Adapters contain no paper math; they realize threshold (scalar or per channel), initial
state, the ``v >= threshold`` firing rule and reset by subtraction with their framework's
genuine neurons. Installed as ``snnbridge.adapters.<framework>``.
"""
