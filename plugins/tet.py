"""TET: temporal efficient training (Deng, Li, Zhang, Gu; ICLR 2022, arXiv:2202.11946).

Code: github.com/Gus-Lab/temporal_efficient_training (``TET_loss`` in ``functions.py``).
A base training loss on the per-step outputs ``O`` of a non-firing output layer, ``[T, B, K]``
(time first: ``snn.steps(x)``)::

    L = (1 - lam) * (1/T) sum_t CE(O(t), y)  +  lam * mean((O - phi)^2)

Each step's cross-entropy sends its own error ``softmax(O(t)) - onehot(y)`` back, instead of
the error of the mean that standard training (CE of ``mean_t O(t)``) spreads over all steps;
the squared term pulls *every* logit (not a one-hot target) towards the constant ``phi`` and
is averaged over T, B and K. The cross-entropy part is down-weighted by ``1 - lam``.
Inference is unchanged: predict the argmax of the mean output (``snn(x)``).

Options: ``lam`` (default 0.05, the paper's CIFAR value; the paper uses 1e-3 on ImageNet and
DVS-CIFAR10, and the official script, a DVS-CIFAR10 one, defaults to ``--lamb 1e-3``) and
``phi`` (1.0, the threshold V_th; the official ``--means``). The math is the official code's;
it keeps time in dimension 1 (``[B, T, K]``), snnbridge in dimension 0. Decoded outputs
``[B, K]`` are refused: they have no time axis to re-weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from snnbridge import InputError, Option, PluginInfo, hookimpl

NAME = "tet"


class TETLoss:
    """``(1 - lam) * mean_t CE(O(t), y) + lam * mean((O - phi)^2)`` on per-step outputs ``[T, B, K]``."""

    def __init__(self, lam: float, phi: float):
        self.lam, self.phi = float(lam), float(phi)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, *, model=None, inputs=None) -> torch.Tensor:
        """The loss value (``model`` and ``inputs`` are not used)."""
        if outputs.dim() != 3:
            raise InputError(f"tet needs the per-step outputs [T, B, K], got decoded outputs of shape "
                             f"{list(outputs.shape)}; use outputs = snn.steps(x) (snn(x) is their mean over T), or "
                             "your model's output before the mean over time.")
        steps, batch, classes = outputs.shape
        per_step_ce = F.cross_entropy(outputs.reshape(steps * batch, classes), targets.repeat(steps))  # mean over T*B
        if self.lam == 0.0:
            return per_step_ce
        return (1.0 - self.lam) * per_step_ce + self.lam * (outputs - self.phi).pow(2).mean()

    def __repr__(self) -> str:
        return f"TETLoss(lam={self.lam!r}, phi={self.phi!r})"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="TET loss: per-step cross-entropy (1 - lam) plus lam * mean((O - phi)^2)",
                      kind="training",
                      reference="Deng et al., Temporal Efficient Training of Spiking Neural Network via Gradient "
                                "Re-weighting, ICLR 2022; official code github.com/Gus-Lab/temporal_efficient_training",
                      provides=("training_loss",))


@hookimpl
def snnbridge_add_options():
    return [Option("lam", float, 0.05, "weight of the squared term; the cross-entropy gets 1 - lam (paper: 0.05 CIFAR, "
                   "1e-3 ImageNet and DVS-CIFAR10)", check=lambda v: math.isfinite(v) and 0.0 <= v <= 1.0,
                   check_help="0 <= lam <= 1"),
            Option("phi", float, 1.0, "the constant every per-step logit is pulled towards (V_th)",
                   check=math.isfinite, check_help="a finite number")]


@hookimpl
def snnbridge_training_loss(options):
    return TETLoss(options["lam"], options["phi"])
