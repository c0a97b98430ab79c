"""One place for the reshapes of per-channel values (thresholds, statistics, biases).

Activations are ``[B, C, ...]`` (``C`` at dimension 1; the features of a ``Linear`` output
``[B, F]`` are its channels), or ``[T, B, C, ...]`` in a time-major sequence (``C`` at 2).
"""

from __future__ import annotations

import torch

from .errors import InputError


def rows(t: torch.Tensor, channel_axis: int | None = 1) -> torch.Tensor:
    """``t`` as ``[C, N]`` rows (one per channel along ``channel_axis``), or ``[1, N]`` when ``None``."""
    if channel_axis is None:
        return t.reshape(1, -1)
    return t.transpose(0, channel_axis).reshape(t.shape[channel_axis], -1)


def broadcast(values, like: torch.Tensor, dim: int = 1):
    """``values`` (a float, or ``[C]``) viewed to broadcast against ``like`` along ``dim``.

    A float passes through unchanged; a ``[C]`` tensor moves to ``like``'s device and dtype.
    """
    if isinstance(values, (int, float)):
        return values
    values = values.to(device=like.device, dtype=like.dtype)
    if like.dim() <= dim or like.shape[dim] != values.shape[0]:
        raise InputError(f"a per-channel value of length {values.shape[0]} does not match dimension {dim} "
                         f"of a tensor shaped {tuple(like.shape)}.")
    shape = [1] * like.dim()
    shape[dim] = values.shape[0]
    return values.view(shape)


def mean(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean over every dimension except ``dim`` (``[B, C, ...] -> [C]``)."""
    others = [d for d in range(t.dim()) if d != dim]
    return t.mean(dim=others) if others else t


def total(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Sum over every dimension except ``dim`` (``[B, C, ...] -> [C]``)."""
    others = [d for d in range(t.dim()) if d != dim]
    return t.sum(dim=others) if others else t
