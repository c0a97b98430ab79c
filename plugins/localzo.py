"""LocalZO: the local zeroth-order surrogate gradient (Mukhoty et al., NeurIPS 2023).

Bhaskar Mukhoty, Velibor Bojkovic, William de Vazelhes, Xiaohan Zhao, Giulia De Masi, Huan Xiong,
Bin Gu, "Direct Training of SNN using Local Zeroth Order Method", NeurIPS 2023; official code
github.com/BhaskarMukhoty/LocalZO (``ZO`` in ``models/layers.py``).

Forward: the exact spike ``H(u)``, ``u = v - threshold``. Backward, for every neuron and step
independently, ``m`` fresh draws ``z_k`` of a symmetric unit-variance distribution and the
two-point zeroth-order estimate of ``dH/du``::

    g(u) = (1/m) sum_k [H(u + delta z_k) - H(u - delta z_k)] z_k / (2 delta)
         = (1/m) sum_k |z_k| * 1[|u| < delta |z_k|] / (2 delta)

so ``g`` is exactly zero where ``|u| >= delta * max_k |z_k|`` (neurons far from the threshold
get no gradient: a sparse backward). Only ``|z|`` matters, so the magnitudes are drawn directly:
``|N(0, 1)|``; ``U(0, sqrt 3)`` for ``z ~ U(-sqrt 3, sqrt 3)``; ``Exp(rate sqrt 2)`` for the unit-variance
Laplace. In expectation ``g`` is a surrogate of width ``delta``: for the normal distribution
``E[g(u)] = phi(u / delta) / delta``, the Gaussian surrogate with *standard deviation* ``delta``.
So ``delta`` is a width, not the "alpha" (a slope) of SpikingJelly's or snnTorch's surrogates:
``delta = 0.5`` is a wide surrogate, ``0.05`` a very narrow one.

Options (official CNN defaults): ``distribution`` ``normal`` (``uniform``, ``laplace``), ``samples``
``m = 5``, ``delta = 0.5``. The official SparseGrad MLP code (FMNIST / N-MNIST / SHD) uses
``m = 1``, ``delta = 0.05``. ``seed``: None draws from torch's global generator (seed it with
``torch.manual_seed``); an integer gives the surrogate its own generator, so a backward is
reproducible (a deep copy continues the same stream; ``manual_seed`` restarts it).

Differences from the official code: the spike fires on ``u >= 0`` (snnbridge's rule on every
backend; the official code fires on ``u > 0``); draws are in the input's dtype on its device
(the official code draws float32 on CUDA only); ``m`` is an option (hard-coded 5 there).
"""

from __future__ import annotations

import math

import torch

from snnbridge import Option, OptionError, PluginInfo, Surrogate, hookimpl

NAME = "localzo"
DISTRIBUTIONS = ("normal", "uniform", "laplace")


class LocalZO(Surrogate):
    """The LocalZO estimator ``g(u) = mean_k |z_k| 1[|u| < delta |z_k|] / (2 delta)`` with fresh ``z`` per call."""

    randomized = True

    def __init__(self, distribution: str = "normal", samples: int = 5, delta: float = 0.5, seed: int | None = None):
        if distribution not in DISTRIBUTIONS or int(samples) < 1 or not (math.isfinite(delta) and delta > 0):
            raise OptionError(f"LocalZO needs distribution in {DISTRIBUTIONS}, samples >= 1 and 0 < delta < inf; got "
                              f"{distribution!r}, {samples!r}, {delta!r}.")
        super().__init__({"distribution": distribution, "samples": samples, "delta": delta, "seed": seed}, seed=seed)
        self.distribution = distribution
        self.samples = int(samples)
        self.delta = float(delta)

    def magnitudes(self, x: torch.Tensor) -> torch.Tensor:
        """Fresh ``|z|`` draws, ``[samples, *x.shape]``, in ``x``'s dtype (float32 for half precision)."""
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        shape = (self.samples, *x.shape)
        g = self.generator(x.device)
        if self.distribution == "normal":
            return torch.randn(shape, generator=g, device=x.device, dtype=dtype).abs_()
        if self.distribution == "uniform":  # |U(-sqrt 3, sqrt 3)| = U(0, sqrt 3)
            return torch.rand(shape, generator=g, device=x.device, dtype=dtype).mul_(math.sqrt(3.0))
        # Laplace with unit variance (scale 1/sqrt 2): |z| is exponential with rate sqrt 2
        return torch.empty(shape, device=x.device, dtype=dtype).exponential_(math.sqrt(2.0), generator=g)

    def estimate(self, u: torch.Tensor, abs_z: torch.Tensor) -> torch.Tensor:
        """The estimate for given draws ``abs_z`` ``[m, *u.shape]``: ``mean_k |z_k| 1[|u| < delta |z_k|] / 2delta``."""
        inside = u.abs() < self.delta * abs_z  # strict: exactly zero from |u| = delta |z_k| on
        return ((abs_z * inside).mean(0) / (2.0 * self.delta)).to(u.dtype)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimate(x, self.magnitudes(x))


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="LocalZO surrogate gradient: a zeroth-order estimate with fresh samples per backward",
                      kind="training", provides=("surrogate",),
                      reference="Mukhoty et al., Direct Training of SNN using Local Zeroth Order Method, NeurIPS 2023 "
                                "(github.com/BhaskarMukhoty/LocalZO)")


@hookimpl
def snnbridge_add_options():
    return [
        Option("distribution", str, "normal", "distribution of z (unit variance): normal, uniform or laplace",
               choices=DISTRIBUTIONS),
        Option("samples", int, 5, "draws m per neuron and step (official CNN code: 5; SparseGrad MLPs: 1)",
               check=lambda v: v >= 1, check_help="samples >= 1"),
        Option("delta", float, 0.5, "width delta: the expected surrogate has standard deviation delta (normal z); "
               "official CNN code 0.5, SparseGrad MLPs 0.05",
               check=lambda v: math.isfinite(v) and v > 0, check_help="0 < delta < inf"),
        Option("seed", int, None, "seed of the surrogate's own generator (null: torch's global generator)",
               nullable=True),
    ]


@hookimpl
def snnbridge_surrogate(options):
    return LocalZO(options["distribution"], options["samples"], options["delta"], options["seed"])
