"""QCFS: quantization-clip-floor-shift activation (Bu et al., ICLR 2022; METHODS.md section 6).

Training (``snnbridge.prepare(model, ["qcfs"])``) swaps every activation call site for a
:class:`QCFS` module with its own trainable threshold ``lam`` (lambda)::

    h(z) = lam * clip(floor(z * L / lam + phi) / L, 0, 1)

``L`` = ``levels``, ``phi`` = ``shift``. The floor is straight-through (d floor(u)/du := 1)
and the clamp comes *before* the floor, as in the new official code (putshua/ANN_SNN_QCFS):
inside ``0 < z < lam`` the gradients are dh/dz = 1 and dh/dlam = (h - z)/lam, above it
dh/dz = 0 and dh/dlam = h/lam (= 1), below it both are 0 (golden fact G2). This window does
not depend on how the installed PyTorch differentiates ``clamp`` at its bounds (the old code's
floor-then-clamp order does).

Defaults (METHODS.md 6.2): ``levels = 8`` (the new official code's default; the paper
recommends 4 or 8, COS/SRP's CIFAR models use 4), ``lambda_init = 8.0``, ``shift = 0.5``.

Conversion (``snnbridge.convert(model, ["qcfs", ...])``): the plugin claims its modules
(``snnbridge_claim_module``), so a prepared, trained and reloaded model converts; every site
becomes IF neurons with threshold ``theta = lam`` of that site (an error names any site
whose ``lam <= 0`` and any site that is not a QCFS activation) and initial potential
``v0 = phi * theta`` with the ``phi`` the network was trained with (``theta/2`` by default;
METHODS.md 6.1, Theorem 2). The initial potential is a *fallback* ``v0_base``: a recipe
plugin that provides ``v0_base`` (``opi``) overrides it, e.g. ``["qcfs", {"opi":
{"fraction": 0.0}}]`` is the phi = 0 ablation of the SNN. The weights are not changed; any
T works (independent of L). The plugin provides ``quantized_ann``, which ``cos`` and ``srp``
require.

Max-pooling: the official code replaces max-pool by average-pool *before training*. This
plugin does not change the pooling of the user's model (``prepare`` only swaps
activations). A max-pool directly after an activation stays exact for the QCFS ANN (QCFS is
monotone, so max and QCFS commute) and becomes pre-neuron max-pooling in the SNN (the core
moves it in front of the neurons); to reproduce the papers, define the model with
``nn.AvgPool2d`` (the CIFAR-10 example model does).

Checkpoints: the names of the swapped modules are deterministic, so
``prepare -> train -> torch.save(state_dict)`` and later
``prepare(fresh model, same options) -> load_state_dict -> convert`` round-trips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from snnbridge import InputError, MissingRequirementError, Option, PluginInfo, hookimpl

NAME = "qcfs"


class QCFS(nn.Module):
    """The QCFS activation with a trainable per-site threshold ``lam`` (a 0-d parameter).

    ``levels`` (L) and ``shift`` (phi) are fixed hyper-parameters. Forward:
    ``lam * floor(clamp(z / lam, 0, 1) * L + phi) / L`` with a straight-through floor.
    """

    def __init__(self, levels: int = 8, lambda_init: float = 8.0, shift: float = 0.5):
        super().__init__()
        if int(levels) < 1:
            raise ValueError(f"QCFS levels must be >= 1, got {levels}")
        if not 0.0 <= float(shift) < 1.0:
            raise ValueError(f"QCFS shift must be in [0, 1), got {shift}")
        self.levels = int(levels)
        self.shift = float(shift)
        self.lam = nn.Parameter(torch.tensor(float(lambda_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam.to(x.dtype)
        u = torch.clamp(x / lam, 0.0, 1.0) * self.levels + self.shift
        q = u + (torch.floor(u) - u).detach()  # straight-through floor
        return q * (lam / self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, shift={self.shift}, lam={float(self.lam.detach()):.4g}"


@dataclass(frozen=True)
class QCFSClaim:
    """What the core stores as ``SiteInfo.claim`` for a QCFS site."""

    kind: str = "qcfs"
    clip_max: float | None = None


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(
        summary="QCFS activation for training (trainable lambda, L levels); converts with theta = lambda, v0 = phi*theta",
        reference="Bu et al., Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency Spiking Neural "
                  "Networks, ICLR 2022",
        provides=("activation", "threshold", "quantized_ann"), fallback=("v0_base",))


@hookimpl
def snnbridge_add_options():
    return [
        Option("levels", int, 8, "quantization levels L of the QCFS activation (paper: 4 or 8)",
               check=lambda n: n >= 1, check_help="levels >= 1"),
        Option("lambda_init", float, 8.0, "initial value of each site's trainable threshold lambda",
               check=lambda v: v > 0 and math.isfinite(v), check_help="lambda_init > 0"),
        Option("shift", float, 0.5, "shift phi inside the floor (0.5 = rounding; the SNN then starts at phi*theta)",
               check=lambda v: 0.0 <= v < 1.0, check_help="0 <= shift < 1"),
    ]


@hookimpl
def snnbridge_replace_activation(site, module, options):
    init = options["lambda_init"]
    return QCFS(levels=options["levels"], lambda_init=init, shift=options["shift"])


@hookimpl
def snnbridge_claim_module(module):
    if isinstance(module, QCFS):
        return QCFSClaim(clip_max=None)
    return None


def site_qcfs(ctx, name: str) -> QCFS:
    """The trained QCFS module of site ``name`` (error if the site is not a QCFS activation)."""
    act = ctx.site_module(name).activation
    if not isinstance(act, QCFS):
        kind = ctx.sites[name].kind
        raise MissingRequirementError(
            f"plugin {NAME!r} converts networks trained with QCFS activations, but site {name!r} is a plain {kind!r} "
            f"activation. Prepare the model with snnbridge.prepare(model, ['qcfs']) and train it (or load a QCFS "
            "checkpoint into a prepared model) before converting; for a plain ReLU network use a threshold estimator "
            "such as 'maxnorm' or 'robustnorm' instead.")
    return act


@hookimpl
def snnbridge_estimate_threshold(ctx, options):
    out = {}
    for name in ctx.sites:
        lam = float(site_qcfs(ctx, name).lam.detach())
        if not (lam > 0 and math.isfinite(lam)):
            raise InputError(
                f"plugin {NAME!r}: site {name!r} has a QCFS threshold lambda = {lam:g}; the SNN threshold theta = lambda "
                "must be a finite positive number (with theta <= 0 the neurons would fire on every step). Retrain with a smaller learning rate or weight decay on lambda, or reset "
                "this site's lambda to a positive value before converting.")
        out[name] = lam
    return out


@hookimpl
def snnbridge_configure_neuron(site, spec, ctx, options):
    if not ctx.recipe.is_active(NAME, "v0_base"):  # another plugin (e.g. opi) writes the initial potential
        return None
    phi = site_qcfs(ctx, site.name).shift
    return spec.replace(v0=phi * spec.threshold)
