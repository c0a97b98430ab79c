"""snnbridge's benchmarks. ``python -m benchmarks`` runs the benchmark suite (:mod:`benchmarks.run`); the other
modules are single studies, each run as a file (``python benchmarks/data_driven.py``). Everything here uses the
public API of snnbridge, the CIFAR-10 example (``examples/cifar10``) and SpikingJelly only."""
