"""Adversarial robustness: FGSM, PGD and uniform noise in pixel space, worst case over surrogate gradients.

The attacks are the standard L-inf ones (Goodfellow et al. 2015; Madry et al. 2018) and work on
any ``nn.Module`` that maps images ``[B, ...]`` to class scores ``[B, K]`` (what
:class:`~snnbridge.runtime.SpikingModel` returns), so the SNN and its ANN are attacked alike.
Inputs are in pixel space (``clamp``, default ``(0, 1)``); normalisation belongs inside the model.
An SNN's input gradient is a surrogate gradient, so an attack on an SNN is as strong as the
surrogate lets it be: :func:`evaluate` runs each gradient attack once per surrogate and keeps the
worst case, the protocol of Liu et al., "Enhancing Adversarial Robustness in SNNs with Sparse
Gradients", ICML 2024 (github.com/putshua/gradient_reg_defense), whose defaults are used here:
PGD with 7 steps of ``alpha = 2.55/255`` at ``eps = 8/255``, uniform noise ``x + eps * U(-1, 1)``.

    report = snnbridge.robustness.evaluate(snn, test_loader, eps=(2/255, 4/255, 8/255),
                                           surrogates=[sigmoid, atan])
    print(report)               # a table: robust accuracy per attack and eps
    report.plot("robust.png")   # accuracy against eps per attack, the worst case marked

The model is never changed: attacks run it in eval mode and restore every module's mode, take
the gradient with respect to the input only (no ``.grad`` left on parameters, ``requires_grad``
untouched), and a switched surrogate is switched back, also on error.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batches import labelled_batches, total_samples
from .errors import InputError
from .progress import bar as progress_bar

#: the attacks :func:`evaluate` knows, in report order
ATTACKS = ("noise", "fgsm", "pgd")
#: attacks that follow the model's (surrogate) gradient; run once per surrogate
GRADIENT_ATTACKS = ("fgsm", "pgd")
#: PGD steps of the official evaluation script (snn_main_test.py, ``--steps`` default)
PGD_STEPS = 7
#: PGD step size over eps of the official setting (alpha = 2.55/255 at eps = 8/255)
PGD_ALPHA_RATIO = 2.55 / 8

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- checks ----------------------------------------------------------------------------------------------------


def _number(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}; pixel-space budgets are fractions of the "
                         "pixel range, e.g. 8/255.")
    value = float(value)
    if positive and value <= 0:
        raise InputError(f"{name} must be > 0, got {value!r}; leave it None for the default.")
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value!r}; it is the radius of the L-inf ball, e.g. 8/255.")
    return value


def _steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number >= 1, got {steps!r}; the official evaluation uses "
                         f"{PGD_STEPS}.")
    return steps


def _clamp(clamp: Any) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if not (isinstance(clamp, (tuple, list)) and len(clamp) == 2):
        raise InputError(f"clamp must be a (low, high) pair such as (0.0, 1.0), or None for no pixel range; got "
                         f"{clamp!r}.")
    lo = _finite(clamp[0], "clamp[0]")
    hi = _finite(clamp[1], "clamp[1]")
    if not lo < hi:
        raise InputError(f"clamp must have low < high, got {clamp!r}.")
    return lo, hi


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _check_x(x: Any, clamp: tuple[float, float] | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"x must be a floating-point batch [B, ...] in pixel space, got {got}; convert images with "
                         "x.float() / 255 (or torchvision's ToTensor).")
    if x.numel() and not torch.isfinite(x).all():
        raise InputError("x contains NaN or infinite values; attacks need finite pixels.")
    if clamp is not None and x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < clamp[0] or hi > clamp[1]:
            raise InputError(f"x lies outside the pixel range clamp={clamp} (min {lo:.4g}, max {hi:.4g}): attacks work "
                             "in pixel space, so normalise inside the model (e.g. nn.Sequential(Normalize, net)), or "
                             "pass the range your inputs live in as clamp=(low, high), or clamp=None.")
    return x


def _check_y(y: Any, x: torch.Tensor, *, indices: bool) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise InputError(f"y must be a tensor of targets, got {type(y).__name__}.")
    if indices and (y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex()):
        raise InputError(f"y must be class indices of shape [B] (an integer tensor), got a {y.dtype} tensor of shape "
                         f"{list(y.shape)}; for one-hot or soft targets pass y.argmax(1), or your own loss=.")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise InputError(f"y has shape {list(y.shape)} but x holds a batch of {x.shape[0]}: give one target per "
                         "sample.")
    return y


def _check_scores(out: Any, y: torch.Tensor, what: str = "the model") -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != y.shape[0]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{what} returns {shape}; attacks and accuracy need class scores [B, classes] (what "
                         "SpikingModel.forward returns; for per-step outputs [T, B, K] pass loss= and attack "
                         "snn.steps yourself).")
    if y.dim() == 1 and not y.dtype.is_floating_point and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= out.shape[1]:
            raise InputError(f"labels range over {lo}..{hi} but the model has {out.shape[1]} classes; pass class "
                             "indices in [0, classes).")
    return out


def _sequence(value: Any, name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InputError(f"{name} must be a number or a sequence of numbers, got {value!r}.")
    return list(value)


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module (an SNN from snnbridge.convert, or an ANN), got "
                         f"{type(model).__name__}; wrap a function in an nn.Module whose forward calls it.")
    return model


def _check_loss(loss: Any) -> Loss | None:
    if loss is not None and not callable(loss):
        raise InputError(f"loss must be a callable loss(output, y) -> tensor (e.g. nn.CrossEntropyLoss()), got "
                         f"{type(loss).__name__}.")
    return loss


# -- the model, left as it was -------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (dropout off, BN running statistics, as torchattacks does for the official
    evaluation) and give every module back the training flag it had."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | None) -> torch.Tensor:
    """d loss / d x, taken with ``torch.autograd.grad`` on the input alone: parameters get no ``.grad``."""
    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xa)
        if loss is None:
            value = F.cross_entropy(_check_scores(out, y), y, reduction="sum")
        else:
            value = loss(out, y)
            if not isinstance(value, torch.Tensor):
                raise InputError(f"loss returned {type(value).__name__}; it must return a tensor.")
            value = value.sum()
        if not value.requires_grad:
            raise InputError("the loss does not depend differentiably on the input: the model runs without autograd "
                             "(torch.no_grad inside forward?) or detaches it. Gradient attacks need a differentiable "
                             "model (for SNNs the 'spikingjelly' or 'snntorch' backend, whose surrogate gradients "
                             "pass the spikes); attacks=('noise',) needs none.")
        (grad,) = torch.autograd.grad(value, xa, allow_unused=True)
    if grad is None:
        raise InputError("the loss does not depend on the input x (its gradient is None): check that the model uses "
                         "its input.")
    if not torch.isfinite(grad).all():
        raise InputError("the loss gradient with respect to the input has NaN or infinite values; check the model "
                         "and the loss for overflow (a surrogate with a very large slope?).")
    return grad


def _project(xa: torch.Tensor, x: torch.Tensor, eps: float, clamp: tuple[float, float] | None) -> torch.Tensor:
    """Onto the L-inf ball of radius eps around x, then the pixel range: every element ends in
    ``[x - eps, x + eps]`` and in ``clamp``, exactly (both bounds are computed in x's dtype)."""
    xa = torch.minimum(torch.maximum(xa, x - eps), x + eps)
    return xa if clamp is None else xa.clamp(clamp[0], clamp[1])


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) of x's shape and dtype, drawn where ``generator`` lives (reproducible across devices)."""
    device = generator.device if generator is not None else x.device
    return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


# -- attacks ---------------------------------------------------------------------------------------------------


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, loss: Loss | None = None,
         clamp: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Fast gradient sign method: ``clamp(x + eps * sign(d loss / d x))``, one gradient step to the ball's corner.

    :param model: any module mapping ``x`` to class scores ``[B, K]`` (an SNN: its surrogate gradient is used).
    :param x: a batch in pixel space, inside ``clamp``.
    :param y: class indices ``[B]`` (or what ``loss`` takes).
    :param eps: L-inf radius, in pixel units (8/255 is the usual CIFAR budget). ``eps = 0`` returns a
        copy of ``x`` without running the model.
    :param loss: ``loss(output, y)`` to increase (default: cross-entropy on the ``[B, K]`` scores).
    :param clamp: the pixel range ``(low, high)``, or None for none.
    :returns: the adversarial batch (detached), in ``[x - eps, x + eps]`` and in ``clamp``.
    """
    model = _check_model(model)
    clamp = _clamp(clamp)
    eps = _number(eps, "eps")
    x = _check_x(x, clamp)
    y = _check_y(y, x, indices=loss is None)
    loss = _check_loss(loss)
    if eps == 0:
        return x.detach().clone()
    with _eval_mode(model):
        grad = _input_gradient(model, x, y, loss)
    x0 = x.detach()
    return _project(x0 + eps * grad.sign(), x0, eps, clamp).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, alpha: float | None = None,
        steps: int = PGD_STEPS, random_start: bool = True, loss: Loss | None = None,
        clamp: tuple[float, float] | None = (0.0, 1.0), generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (L-inf, Madry et al.): ``steps`` sign-gradient steps of size ``alpha``, each
    projected onto the eps-ball around ``x`` and the pixel range.

    :param model: any module mapping ``x`` to class scores ``[B, K]`` (an SNN: its surrogate gradient is used).
    :param x: a batch in pixel space, inside ``clamp``.
    :param y: class indices ``[B]`` (or what ``loss`` takes).
    :param eps: L-inf radius in pixel units; ``eps = 0`` returns a copy of ``x`` without running the model.
    :param alpha: step size. Default ``eps * max(2.55/8, 1/steps)``: the official setting of Liu et al.
        (2.55/255 at eps 8/255, whatever the steps) scaled with eps, and never so small that the steps
        together cannot cross the ball (at most 3 steps: ``eps / steps``).
    :param steps: gradient steps (default 7, the official evaluation script's).
    :param random_start: start from ``x + U(-eps, eps)`` (torchattacks' and the official default).
    :param loss: ``loss(output, y)`` to increase (default: cross-entropy on the ``[B, K]`` scores).
    :param clamp: the pixel range ``(low, high)``, or None for none.
    :param generator: the random start's generator (default: torch's global one).
    :returns: the adversarial batch (detached), in ``[x - eps, x + eps]`` and in ``clamp``.
    """
    model = _check_model(model)
    clamp = _clamp(clamp)
    eps = _number(eps, "eps")
    steps = _steps(steps)
    alpha = default_alpha(eps, steps) if alpha is None else _number(alpha, "alpha", positive=True)
    x = _check_x(x, clamp)
    y = _check_y(y, x, indices=loss is None)
    loss = _check_loss(loss)
    if eps == 0:
        return x.detach().clone()
    x0 = x.detach()
    xa = _project(x0 + eps * (2 * _uniform(x0, generator) - 1), x0, eps, clamp) if random_start else x0.clone()
    with _eval_mode(model):
        for _ in range(steps):
            grad = _input_gradient(model, xa, y, loss)
            xa = _project(xa + alpha * grad.sign(), x0, eps, clamp)
    return xa.detach()


def default_alpha(eps: float, steps: int = PGD_STEPS) -> float:
    """PGD's default step size: ``eps * max(2.55/8, 1/steps)`` (2.55/255 at eps = 8/255, Liu et al.'s setting)."""
    return float(eps) * max(PGD_ALPHA_RATIO, 1.0 / int(steps))


def uniform_noise(x: torch.Tensor, eps: float, *, clamp: tuple[float, float] | None = (0.0, 1.0),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random baseline: ``clamp(x + eps * U(-1, 1))``, i.i.d. per pixel (the official code's uniform "attack").

    The gap between accuracy under this noise and under PGD of the same eps is what the gradient-sparsity
    regularizer of Liu et al. narrows. ``eps = 0`` returns a copy of ``x``.
    """
    clamp = _clamp(clamp)
    eps = _number(eps, "eps")
    x = _check_x(x, clamp)
    x0 = x.detach()
    if eps == 0:
        return x0.clone()
    return _project(x0 + eps * (2 * _uniform(x0, generator) - 1), x0, eps, clamp)


# -- evaluation ------------------------------------------------------------------------------------------------


def _surrogate_list(surrogates: Any, model: nn.Module) -> list[tuple[str, Any]]:
    if surrogates is None:
        return []
    if not callable(getattr(model, "set_surrogate", None)):
        raise InputError(f"surrogates= needs a model with set_surrogate(s) (a SpikingModel on the 'spikingjelly' or "
                         f"'snntorch' backend); {type(model).__name__} has none. A wrapper around an SNN can forward "
                         "set_surrogate (and a surrogate attribute) to it; or leave surrogates=None to attack the "
                         "model with its own gradient.")
    if isinstance(surrogates, Mapping):
        items = [(str(k), v) for k, v in surrogates.items()]
    elif isinstance(surrogates, (str, bytes)) or not isinstance(surrogates, Iterable):
        raise InputError(f"surrogates must be a list of surrogate objects (e.g. snnbridge.surrogate(...) results) or a "
                         f"dict label -> surrogate; got {surrogates!r}.")
    else:
        items = [(_label(s), s) for s in surrogates]
    if not items:
        raise InputError("surrogates is empty: a worst case needs at least one surrogate; leave it None to attack "
                         "the model with its own gradient.")
    seen: dict[str, int] = {}
    out = []
    for label, s in items:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}#{seen[label]}", s))
    return out


def _label(surrogate: Any) -> str:
    name = getattr(surrogate, "name", None)
    if isinstance(name, str) and name:
        return name
    text = repr(surrogate)
    return text if len(text) <= 40 else type(surrogate).__name__


def _current_surrogate(model: nn.Module) -> tuple[bool, Any]:
    """(known, value): the surrogate the model has now, when it tells (a ``surrogate`` attribute or
    ``get_surrogate()``), so that it can be set back."""
    getter = getattr(model, "get_surrogate", None)
    if callable(getter):
        return True, getter()
    if hasattr(type(model), "surrogate") or "surrogate" in vars(model):
        return True, model.surrogate
    return False, None


@contextlib.contextmanager
def _surrogate_model(model: nn.Module, switching: bool) -> Iterator[nn.Module]:
    """The model to switch surrogates on: ``model`` itself, set back to its surrogate afterwards (also on error),
    or, when it cannot say which surrogate it has, a deep copy (the original is then never touched)."""
    if not switching:
        yield model
        return
    known, before = _current_surrogate(model)
    if not known:
        yield copy.deepcopy(model)
        return
    try:
        yield model
    finally:
        _switch(model, before)


def _switch(model: Any, surrogate: Any) -> None:
    """``model.set_surrogate(surrogate)`` (typed Any: nn.Module's attribute typing does not know the method)."""
    model.set_surrogate(surrogate)


def _eps_label(eps: float) -> str:
    """``8/255`` for whole multiples of 1/255 (the usual budgets), else the number."""
    v = eps * 255
    if abs(v - round(v)) < 1e-6 * max(1.0, abs(v)):
        return f"{round(v)}/255"
    return f"{eps:.4g}"


@dataclass
class RobustnessReport:
    """What :func:`evaluate` measured: clean accuracy and robust accuracy per attack and eps.

    A sample counts as robust only if the model classifies it correctly clean *and* under the
    attack, so an attack can never raise accuracy above the clean one. ``accuracy[attack][i]``
    belongs to ``eps[i]``; for a gradient attack run with several surrogates it is the worst
    case (a sample survives only if it survives every surrogate's attack) and
    ``per_surrogate[attack][label][i]`` holds each surrogate's own accuracy. Fractions in [0, 1].

    Fields: ``samples``, ``clean_accuracy``, ``eps`` (pixel units), ``accuracy``, ``per_surrogate``
    (empty without surrogates), ``surrogates`` (their labels), ``settings`` (steps, alpha per eps,
    random_start, clamp, seed, loss) and ``seconds``.
    """

    samples: int
    clean_accuracy: float
    eps: list[float]
    accuracy: dict[str, list[float]]
    per_surrogate: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    surrogates: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def attacks(self) -> list[str]:
        """The attacks measured, in report order."""
        return list(self.accuracy)

    def worst(self, eps: float | None = None) -> float:
        """The lowest robust accuracy over every attack at ``eps`` (default: the largest eps)."""
        i = self._eps_index(eps)
        return min([acc[i] for acc in self.accuracy.values()], default=self.clean_accuracy)

    def _eps_index(self, eps: float | None) -> int:
        if eps is None:
            return max(range(len(self.eps)), key=lambda k: self.eps[k])
        for k, e in enumerate(self.eps):
            if math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12):
                return k
        raise InputError(f"eps={eps!r} was not measured; the report has eps {', '.join(map(_eps_label, self.eps))}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, floats, strings) for JSON."""
        return {"samples": self.samples, "clean_accuracy": self.clean_accuracy, "eps": list(self.eps),
                "eps_labels": [_eps_label(e) for e in self.eps],
                "accuracy": {k: list(v) for k, v in self.accuracy.items()},
                "per_surrogate": {a: {s: list(v) for s, v in d.items()} for a, d in self.per_surrogate.items()},
                "surrogates": list(self.surrogates), "settings": dict(self.settings), "seconds": self.seconds,
                "robust_means": "correct on the clean input and under the attack (worst case over surrogates)"}

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Accuracy (%) against eps, one colour per attack; the worst case over surrogates is the thick line
        and each surrogate's own attack a thin dotted one; clean accuracy dashed. Returns the path."""
        from .plots import COLORS, MARKERS, _figure, _save, _wrap

        fig = _figure(9, 4.5)
        ax = fig.add_subplot(1, 1, 1)
        xs = [255 * e for e in self.eps]
        order = sorted(range(len(xs)), key=lambda k: xs[k])
        xs_sorted = [xs[k] for k in order]
        for i, (attack, acc) in enumerate(self.accuracy.items()):
            color = COLORS[i % len(COLORS)]
            per = self.per_surrogate.get(attack, {})
            label = attack + (f" (worst case over {len(per)} surrogates)" if len(per) > 1 else "")
            ax.plot(xs_sorted, [100 * acc[k] for k in order], color=color, marker=MARKERS[i % len(MARKERS)],
                    linewidth=2.4 if len(per) > 1 else 1.6, markersize=5, label=label)
            if len(per) > 1:
                for surrogate, vals in per.items():
                    ax.plot(xs_sorted, [100 * vals[k] for k in order], color=color, linestyle=":", linewidth=1.0,
                            alpha=0.8, label=f"  {attack}, {surrogate}")
        ax.axhline(100 * self.clean_accuracy, color="black", linestyle="--", linewidth=1.2,
                   label=f"clean ({100 * self.clean_accuracy:.1f}%)")
        ax.set_ylim(0, 100)
        ax.set_xlabel("eps (L-inf, x/255 of the pixel range)")
        ax.set_ylabel("robust accuracy (%)")
        head = title or f"Robust accuracy vs eps ({self.samples} samples; robust = correct clean and attacked)"
        ax.set_title(_wrap(head, 70), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        return _save(fig, path)

    def __str__(self) -> str:
        labels = [_eps_label(e) for e in self.eps]
        rows: list[tuple[str, list[float]]] = []
        for attack, acc in self.accuracy.items():
            per = self.per_surrogate.get(attack, {})
            rows.append((attack + (f" (worst of {len(per)})" if len(per) > 1 else ""), acc))
            if len(per) > 1:
                rows += [(f"  {attack} [{s}]", vals) for s, vals in per.items()]
        width = max([len("attack")] + [len(r[0]) for r in rows])
        cols = [max(7, len(lab)) for lab in labels]
        lines = [f"robust accuracy on {self.samples} samples (correct clean and under attack); "
                 f"clean {100 * self.clean_accuracy:.1f}%",
                 "  ".join(["attack".ljust(width)] + [f"eps {lab}".rjust(c + 4) for lab, c in zip(labels, cols)])]
        for name, acc in rows:
            lines.append("  ".join([name.ljust(width)] + [f"{100 * a:.1f}%".rjust(c + 4) for a, c in zip(acc, cols)]))
        return "\n".join(lines)


def evaluate(model: nn.Module, data: Any, *, eps: float | Sequence[float] = (2 / 255, 4 / 255, 8 / 255),
             attacks: Sequence[str] = ATTACKS, surrogates: Sequence[Any] | Mapping[str, Any] | None = None,
             steps: int = PGD_STEPS, alpha: float | None = None, random_start: bool = True, loss: Loss | None = None,
             clamp: tuple[float, float] | None = (0.0, 1.0), seed: int | None = 0,
             device: torch.device | str | None = None, progress: bool = True) -> RobustnessReport:
    """Clean and robust accuracy of ``model`` under each attack and eps (see :class:`RobustnessReport`).

    :param model: an SNN (:class:`~snnbridge.runtime.SpikingModel`) or any module giving ``[B, K]`` scores.
    :param data: a DataLoader / iterable of ``(x, y)`` batches, or one ``(x, y)`` pair; pixels in ``clamp``.
    :param eps: one budget or several (pixel units; default 2/255, 4/255, 8/255). eps = 0 gives the
        clean accuracy for every attack (the attacks return ``x`` itself).
    :param attacks: any of ``"noise"`` (:func:`uniform_noise`), ``"fgsm"``, ``"pgd"``.
    :param surrogates: surrogate objects that ``model.set_surrogate`` accepts (a list, or a dict
        label -> surrogate): each gradient attack runs once per surrogate and a sample is robust only
        if it survives all (Liu et al.'s white-box ensemble; a single surrogate can hide a weak
        gradient, i.e. gradient obfuscation). The model's surrogate is set back afterwards, also on
        error; a model that cannot report its current surrogate is attacked on a copy. Noise has no
        gradient and is drawn once (the official loop redraws it per gradient setting, a worst case over
        four draws). None: the model's own gradient.
    :param steps, alpha, random_start: PGD settings (see :func:`pgd`; ``alpha`` None: per-eps default).
    :param loss: the loss the attacks increase (default cross-entropy).
    :param clamp: the pixel range, or None.
    :param seed: seeds the noise and PGD's random starts (one generator for the whole run), or None for
        torch's global generator.
    :param device: where to run (default: the model's parameters' device).
    :param progress: show a progress bar over the batches.
    """
    started = time.perf_counter()
    model = _check_model(model)
    eps_list = [_number(e, "eps") for e in ([eps] if isinstance(eps, numbers.Real) else _sequence(eps, "eps"))]
    if not eps_list:
        raise InputError("eps is empty; give one budget or several, e.g. eps=(2/255, 4/255, 8/255).")
    if isinstance(attacks, str):
        attacks = [attacks]
    attack_list = list(dict.fromkeys(attacks))
    unknown = [a for a in attack_list if a not in ATTACKS]
    if unknown or not attack_list:
        raise InputError(f"unknown attack(s) {unknown!r}; choose from {', '.join(ATTACKS)}." if unknown else
                         f"attacks is empty; choose from {', '.join(ATTACKS)}.")
    attack_list = [a for a in ATTACKS if a in attack_list]
    steps = _steps(steps)
    if alpha is not None:
        alpha = _number(alpha, "alpha", positive=True)
    clamp = _clamp(clamp)
    loss = _check_loss(loss)
    grad_attacks = [a for a in attack_list if a in GRADIENT_ATTACKS]
    settings_list = _surrogate_list(surrogates, model)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InputError(f"seed must be a whole number or None, got {seed!r}.")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n_eps, n_sur = len(eps_list), max(1, len(settings_list))
    correct = 0
    robust = {a: [0] * n_eps for a in attack_list}
    per = {a: [[0] * n_eps for _ in range(n_sur)] for a in grad_attacks}
    seen = 0
    switching = bool(settings_list) and bool(grad_attacks)

    def predict(m: nn.Module, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _check_scores(m(inputs), y).argmax(-1) == y

    bar = progress_bar(desc="robustness", enabled=progress, total=total_samples(data), unit="img")
    try:
        with _surrogate_model(model, switching) as target, _eval_mode(target):
            for x, y in labelled_batches(data, "robustness"):
                x = _check_x(x.to(device), clamp)
                y = _check_y(y.to(device), x, indices=True)
                clean_ok = predict(target, x, y)
                correct += int(clean_ok.sum())
                if "noise" in robust:
                    for i, e in enumerate(eps_list):
                        ok = clean_ok if e == 0 else clean_ok & predict(
                            target, uniform_noise(x, e, clamp=clamp, generator=generator), y)
                        robust["noise"][i] += int(ok.sum())
                alive = {a: [clean_ok.clone() for _ in eps_list] for a in grad_attacks}
                for s, (_, surrogate) in enumerate(settings_list or [("", None)]):
                    if settings_list:
                        _switch(target, surrogate)
                    for i, e in enumerate(eps_list):
                        for a in grad_attacks:
                            if e == 0:
                                ok = clean_ok
                            elif a == "fgsm":
                                ok = clean_ok & predict(target, fgsm(target, x, y, e, loss=loss, clamp=clamp), y)
                            else:
                                adv = pgd(target, x, y, e, alpha=alpha, steps=steps, random_start=random_start,
                                          loss=loss, clamp=clamp, generator=generator)
                                ok = clean_ok & predict(target, adv, y)
                            per[a][s][i] += int(ok.sum())
                            alive[a][i] &= ok
                for a in grad_attacks:
                    for i in range(n_eps):
                        robust[a][i] += int(alive[a][i].sum())
                seen += int(y.shape[0])
                bar.update(int(y.shape[0]))
    finally:
        bar.close()
    if seen == 0:
        raise InputError("data yielded no samples; pass a non-empty DataLoader or (x, y) pair.")
    labels = [label for label, _ in settings_list]
    alphas = [alpha if alpha is not None else float(f"{default_alpha(e, steps):.12g}") for e in eps_list]
    settings = {"steps": steps, "alpha": alphas,
                "random_start": random_start, "clamp": list(clamp) if clamp is not None else None, "seed": seed,
                "loss": "cross_entropy" if loss is None else getattr(loss, "__name__", type(loss).__name__)}
    return RobustnessReport(
        samples=seen, clean_accuracy=correct / seen, eps=eps_list,
        accuracy={a: [c / seen for c in robust[a]] for a in attack_list},
        per_surrogate={a: {labels[s]: [c / seen for c in per[a][s]] for s in range(len(labels))}
                       for a in grad_attacks} if labels else {},
        surrogates=labels, settings=settings, seconds=round(time.perf_counter() - started, 3))
