"""GSR: gradient-sparsity regularization for adversarial robustness (Liu, Bu, Ding, Hao, Huang, Yu; ICML 2024).

"Enhancing Adversarial Robustness in SNNs with Sparse Gradients", PMLR 235:30738-30754,
arXiv:2405.20355. Code: github.com/putshua/gradient_reg_defense (``train_reg`` in ``utils.py``).
The gap between adversarial and random-perturbation robustness is bounded by the sparsity
of the input gradient of the true-class probability; the term penalises its l1 norm,
estimated by one finite difference so that no double back-propagation is needed. A *term*
added to the recipe's base loss (cross-entropy on the time-mean, as published, or ``tet``):

1. ``o`` = clean outputs (their time-mean when given ``[T, B, K]``); per sample, the rival
   ``k`` = the largest logit among the classes other than ``y`` - fixed from this pass;
2. ``f = exp(o_y) / (exp(o_y) + exp(o_k))`` (a pairwise softmax, not the full one);
3. ``d = df/dx`` by one backward to the input, the graph kept for the loss
   (``create_graph=False``: ``d`` is not differentiated again); ``v = sign(d)``, detached;
4. ``o' = model(x + h v)`` and ``f'`` with the same ``k``; ``g = (f' - f) / h``, which
   approximates ``||df/dx||_1``;
5. ``loss = base + lam * mean_B(g^2)``: the parameters get gradients through both passes.

Options: ``h`` (0.01, the official value) is in input units *before* normalisation, so the
model should normalise inside its ``forward``, as the official models do. ``lam`` is required:
the official command line defaults to 0 (no term) and the paper's per-dataset values could
not be verified; the scale of ``g^2`` grows with the number of input pixels, so no single
value transfers (the official ``train_reg`` function's own default, 0.1, is one starting
point). Costs one more forward and one input-gradient backward per batch.

Call it with ``model`` (a callable that reruns the network from a fresh state:
``snnbridge.SpikingModel`` does; for a SpikingJelly network pass a function that calls
``functional.reset_net`` first) and ``inputs`` (the very tensor the outputs came from, after
``x.requires_grad_(True)``). The model's train/eval mode is left as it is: the official code
computes everything in training mode (BatchNorm batch statistics included).
"""

from __future__ import annotations

import math

import torch

from snnbridge import InputError, MissingRequirementError, Option, PluginInfo, hookimpl

NAME = "gsr"


def time_mean(outputs: torch.Tensor) -> torch.Tensor:
    """``[T, B, K]`` -> its mean over T; ``[B, K]`` unchanged."""
    return outputs.mean(0) if outputs.dim() == 3 else outputs


def strongest_rival(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample, the index of the largest logit among the classes other than the target (no gradient)."""
    masked = logits.detach().clone()
    masked.scatter_(1, targets[:, None], float("-inf"))
    return masked.argmax(1)


def pairwise_true_probability(logits: torch.Tensor, targets: torch.Tensor, rival: torch.Tensor) -> torch.Tensor:
    """``exp(o_y) / (exp(o_y) + exp(o_k))`` per sample, computed stably as ``sigmoid(o_y - o_k)``."""
    true = logits.gather(1, targets[:, None])[:, 0]
    other = logits.gather(1, rival[:, None])[:, 0]
    return torch.sigmoid(true - other)


class GSRLoss:
    """``base(outputs, targets) + lam * mean_B(((f(x + h sign(df/dx)) - f(x)) / h)^2)``; see the module docstring."""

    def __init__(self, base, h: float, lam: float):
        self.base, self.h, self.lam = base, float(h), float(lam)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, *, model=None, inputs=None) -> torch.Tensor:
        """Base loss plus the sparsity term; runs ``model`` once more on the perturbed inputs."""
        if model is None:
            raise MissingRequirementError("gsr runs the model a second time, on x + h * sign(df/dx): pass it, e.g. "
                                          "loss(outputs, y, model=snn, inputs=x).")
        if not callable(model):
            raise InputError(f"gsr: model must be the network (a callable inputs -> outputs), got "
                             f"{type(model).__name__}.")
        if inputs is None:
            raise MissingRequirementError("gsr differentiates the outputs w.r.t. the inputs: pass the tensor they "
                                          "came from, e.g. loss(outputs, y, model=snn, inputs=x).")
        if not isinstance(inputs, torch.Tensor):
            raise InputError(f"gsr: inputs must be the input tensor of the forward pass, got {type(inputs).__name__}.")
        if not inputs.requires_grad:
            raise InputError("gsr: the inputs do not require grad, so the clean outputs do not depend on them and "
                             "df/dx cannot be taken. Call x.requires_grad_(True) before the forward pass "
                             "(x.requires_grad_(True); outputs = snn.steps(x)), then pass inputs=x.")
        clean = time_mean(outputs)
        if clean.shape[1] < 2:
            raise InputError(f"gsr compares the true class with its strongest rival, so it needs K >= 2 classes; the "
                             f"outputs have K = {clean.shape[1]}.")
        base = self.base(outputs, targets, model=model, inputs=inputs)
        rival = strongest_rival(clean, targets)
        f = pairwise_true_probability(clean, targets, rival)
        if not f.requires_grad:
            raise InputError("gsr: the outputs carry no gradient (computed under torch.no_grad(), or detached); run "
                             "the forward pass with gradients enabled.")
        (grad,) = torch.autograd.grad(f.sum(), inputs, create_graph=False, retain_graph=True, allow_unused=True)
        if grad is None:
            raise InputError("gsr: the outputs do not depend on the given inputs; pass the very tensor the forward "
                             "pass read (x.requires_grad_(True); outputs = snn.steps(x); loss(outputs, y, model=snn, "
                             "inputs=x)).")
        perturbed = inputs.detach() + self.h * grad.sign()
        again = model(perturbed)
        if not isinstance(again, torch.Tensor) or time_mean(again).shape != clean.shape:
            got = list(again.shape) if isinstance(again, torch.Tensor) else type(again).__name__
            raise InputError(f"gsr: model(inputs) must give outputs like the ones passed to the loss "
                             f"({list(clean.shape)} after the mean over T), got {got}; pass the model the outputs "
                             "came from.")
        f_perturbed = pairwise_true_probability(time_mean(again), targets, rival)
        g = (f_perturbed - f) / self.h
        return base + self.lam * g.pow(2).mean()

    def __repr__(self) -> str:
        return f"GSRLoss(base={self.base!r}, h={self.h!r}, lam={self.lam!r})"


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(summary="gradient-sparsity term for adversarial robustness: lam * mean(((f(x + h sign(df/dx)) - "
                              "f(x)) / h)^2), f the true-vs-rival softmax",
                      kind="training",
                      reference="Liu et al., Enhancing Adversarial Robustness in SNNs with Sparse Gradients, ICML "
                                "2024; official code github.com/putshua/gradient_reg_defense",
                      provides=("loss_term",))


@hookimpl
def snnbridge_add_options():
    return [Option("h", float, 0.01, "finite-difference step, in input units before normalisation",
                   check=lambda v: math.isfinite(v) and v > 0, check_help="h > 0"),
            Option("lam", float, None, "weight of the sparsity term; no verified paper value, the official train_reg "
                   "function defaults to 0.1", check=lambda v: math.isfinite(v) and v > 0,
                   check_help="lam > 0 (leave gsr out for no term)", required=True)]


@hookimpl
def snnbridge_training_loss(options, base):
    return GSRLoss(base, options["h"], options["lam"])
