"""sg: the classic deterministic surrogate gradients, one ``shape`` option for all.

Forward: the exact spike ``H(x)``, ``x = v - threshold``. Backward: the derivative of a smooth
primitive ``P`` (shape parameter ``alpha``, default per shape)::

    triangle      (1/a^2) max(0, a - |x|)           P: piecewise quadratic     a = gamma = 1
    sigmoid       k s (1 - s),  s = sigmoid(k x)      P = s                      a = k = 4
    atan          (a/2) / (1 + (pi a x / 2)^2)       P = 1/2 + atan(pi a x/2)/pi a = alpha = 2
    fast_sigmoid  1 / (1 + k |x|)^2                  P = x / (1 + k |x|)        a = k = 25

* triangle: TET's surrogate (Deng et al., ICLR 2022, github.com/Gus-Lab/temporal_efficient_training,
  gamma = 1), also the training surrogate of Liu et al. (ICML 2024); SpikingJelly's
  ``PiecewiseQuadratic(alpha=1/gamma)``.
* sigmoid: SpikingJelly's default ``surrogate.Sigmoid(alpha=4)`` (Wu et al., STBP, 2018).
* atan: SpikingJelly's ``surrogate.ATan(alpha=2)`` and snnTorch's default ``surrogate.atan(alpha=2)``
  (Fang et al., ICCV 2021).
* fast_sigmoid: SuperSpike (Zenke & Ganguli, Neural Computation 2018), snnTorch's
  ``surrogate.fast_sigmoid(slope=25)``; not normalized (it integrates to 2/k), as there.

Liu et al., "Enhancing Adversarial Robustness in SNNs with Sparse Gradients" (ICML 2024,
github.com/putshua/gradient_reg_defense) attack through triangle (1), sigmoid (4) and atan (2)
and keep the worst case: ``[snnbridge.surrogate({"sg": {"shape": s}}) for s in ("triangle",
"sigmoid", "atan")]``. Every shape fires on ``x >= 0`` on every backend (snnTorch's own fire on
``x > 0``).
"""

from __future__ import annotations

import math

import torch

from snnbridge import Option, OptionError, PluginInfo, Surrogate, hookimpl

NAME = "sg"
#: shape -> the usual default of its parameter alpha
DEFAULTS = {"triangle": 1.0, "sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0}


class SG(Surrogate):
    """A deterministic surrogate of one ``shape`` with parameter ``alpha`` (see the module docstring)."""

    def __init__(self, shape: str = "atan", alpha: float | None = None):
        if shape not in DEFAULTS or not (alpha is None or (math.isfinite(alpha) and alpha > 0)):
            raise OptionError(f"sg needs shape in {tuple(DEFAULTS)} and alpha > 0 (or None); got {shape!r}, {alpha!r}.")
        alpha = DEFAULTS[shape] if alpha is None else float(alpha)
        super().__init__({"shape": shape, "alpha": alpha})
        self.shape = shape
        self.alpha = alpha

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        if self.shape == "triangle":
            return (a - x.abs()).clamp_min(0) / (a * a)
        if self.shape == "sigmoid":
            s = torch.sigmoid(a * x)
            return a * s * (1 - s)
        if self.shape == "atan":
            return (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
        return 1 / (1 + a * x.abs()) ** 2

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        if self.shape == "triangle":
            c = x.clamp(-a, a)
            return torch.where(c < 0, (a + c) ** 2, 2 * a * a - (a - c) ** 2) / (2 * a * a)
        if self.shape == "sigmoid":
            return torch.sigmoid(a * x)
        if self.shape == "atan":
            return 0.5 + torch.atan(math.pi / 2 * a * x) / math.pi
        return x / (1 + a * x.abs())


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="classic surrogate gradients: triangle, sigmoid, atan, fast_sigmoid", kind="training",
                      provides=("surrogate",),
                      reference="Deng et al., TET, ICLR 2022 (triangle); Wu et al., STBP, 2018 (sigmoid); Fang et al., "
                                "ICCV 2021 (atan); Zenke & Ganguli, SuperSpike, 2018 (fast_sigmoid)")


@hookimpl
def snnbridge_add_options():
    return [
        Option("shape", str, "atan", "the surrogate's shape: " + ", ".join(DEFAULTS), choices=tuple(DEFAULTS)),
        Option("alpha", float, None, "the shape's parameter (null: its usual default, "
               + ", ".join(f"{s} {a:g}" for s, a in DEFAULTS.items()) + "): triangle half-width gamma, sigmoid and "
               "fast_sigmoid slope k, atan alpha", nullable=True,
               check=lambda v: math.isfinite(v) and v > 0, check_help="0 < alpha < inf"),
    ]


@hookimpl
def snnbridge_surrogate(options):
    return SG(options["shape"], options["alpha"])
