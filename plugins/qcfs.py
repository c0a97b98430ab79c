"""QCFS: the quantization-clip-floor-shift activation (Bu et al., ICLR 2022). Code: github.com/putshua/ANN_SNN_QCFS.

Training (``snnbridge.prepare(model, ["qcfs"])``) swaps every activation call site for a
:class:`QCFS` module with its own trainable threshold ``lam``::

    h(z) = lam * clip(floor(z * L / lam + phi) / L, 0, 1)        (L = levels, phi = shift)

with a straight-through floor and the clamp *before* the floor, as the new official code:
inside ``0 < z < lam`` dh/dz = 1 and dh/dlam = (h - z)/lam, above it dh/dz = 0 and
dh/dlam = 1, below both 0 (the old code's floor-then-clamp order makes the window depend on
how PyTorch differentiates ``clamp`` at its bounds). Defaults: ``levels = 8`` (the new
official code; the paper recommends 4 or 8), ``lambda_init = 8.0``, ``shift = 0.5``.

Conversion (``["qcfs", ...]``): the plugin claims its modules, so a prepared, trained and
reloaded model converts; every site becomes IF neurons with ``theta = lam`` (a clear error
for ``lam <= 0`` or a site that is not QCFS) and ``v0 = phi * theta`` (Theorem 2: zero
expected error for any T). ``v0`` is a *fallback* ``v0_base`` (``opi`` overrides it, e.g.
``{"opi": {"fraction": 0.0}}`` is the phi = 0 ablation). Weights are unchanged; any T works.
Provides ``quantized_ann``, which ``cos`` and ``srp`` require.

Where the official code differs: it replaces max-pool by average pooling before training;
this plugin leaves the model's pooling alone (a max-pool after a QCFS activation is exact
for the ANN and becomes pre-neuron max pooling in the SNN). Module names are deterministic,
so ``prepare -> train -> state_dict -> prepare(fresh) -> load_state_dict -> convert`` round-trips.
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
    #: L, read back as ``SiteInfo.levels`` (cos and srp size their pre-simulation by it)
    levels: int | None = None


@hookimpl
def snnbridge_plugin_info():
    return PluginInfo(
        summary="QCFS activation for training (trainable lambda, L levels); converts with theta = lambda, v0 = "
                "phi*theta",
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
        return QCFSClaim(clip_max=None, levels=module.levels)
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
                f"plugin {NAME!r}: site {name!r} has a QCFS threshold lambda = {lam:g}; the SNN threshold theta = "
                "lambda "
                "must be a finite positive number (with theta <= 0 the neurons would fire on every step). Retrain "
                "with a smaller learning rate or weight decay on lambda, or reset "
                "this site's lambda to a positive value before converting.")
        out[name] = lam
    return out


@hookimpl
def snnbridge_configure_neuron(site, spec, ctx, options):
    if not ctx.recipe.is_active(NAME, "v0_base"):  # another plugin (e.g. opi) writes the initial potential
        return None
    phi = site_qcfs(ctx, site.name).shift
    return spec.replace(v0=phi * spec.threshold)
