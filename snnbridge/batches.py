"""What a user's data yields, read one way by calibration, evaluation, reports, tune and robustness.

A batch item is an input tensor, an ``(inputs, labels, ...)`` tuple or list (what a DataLoader over a
torchvision dataset yields), or a mapping with an input key and optionally a label key (dict-collating
pipelines, Hugging Face ``datasets``). Reading it in one place keeps every entry point accepting the
same shapes: a loader that calibrates a conversion also evaluates it, reports on it and tunes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from .errors import InputError

#: keys a mapping batch may keep its inputs under (first match wins)
INPUT_KEYS = ("input", "inputs", "image", "images", "img", "x", "pixel_values", "data")
#: keys a mapping batch may keep its class labels under (first match wins)
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def is_labels(y: Any, x: torch.Tensor) -> bool:
    """Whether ``y`` is class labels for the batch ``x``: a 1-D integer tensor, one class index per sample."""
    return (isinstance(y, torch.Tensor) and y.dim() == 1 and not torch.is_floating_point(y)
            and y.shape[0] == x.shape[0])


def is_whole_pair(data: Any) -> bool:
    """Whether ``data`` is one ``(inputs [N, ...], targets [N, ...])`` pair given whole, not two batches.

    One entry per sample and per-sample shapes that differ (two input batches share theirs). The
    targets are not checked here: whoever reads them names what is wrong with them (float or one-hot
    labels get that error, not a puzzling "batch 1 is a Tensor").
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        return False
    x, y = data
    return x.dim() >= 2 and y.dim() >= 1 and x.shape[0] == y.shape[0] and x.shape[1:] != y.shape[1:]


def split_item(item: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(inputs, labels)`` of one batch item, ``None`` for a part it does not carry."""
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        return item[0], y
    if isinstance(item, Mapping):
        x = next((item[k] for k in INPUT_KEYS if isinstance(item.get(k), torch.Tensor)), None)
        y = next((item[k] for k in LABEL_KEYS if isinstance(item.get(k), torch.Tensor)), None)
        return x, (y if x is not None else None)
    return None, None


def labelled_batches(data: Any, what: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, labels)`` per batch of ``data`` (a DataLoader, an iterable of batches or one whole pair).

    ``what`` names the caller in errors (e.g. ``"evaluation"``): an item without inputs and labels is
    refused with its position, since a silently skipped batch would change the accuracy.
    """
    if is_whole_pair(data):
        yield data[0], data[1]
        return
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise InputError(f"{what} data must be a DataLoader or iterable of (images, labels) batches, or one "
                         f"(images, labels) pair; got a {type(data).__name__}.")
    for i, item in enumerate(data):
        x, y = split_item(item)
        if x is None or y is None:
            raise InputError(f"{what} batch {i + 1} is a {type(item).__name__}, not an (images, labels) pair of "
                             f"tensors (or a dict with one of the keys {', '.join(INPUT_KEYS)} and one of "
                             f"{', '.join(LABEL_KEYS)}); give a DataLoader or iterable of such batches.")
        yield x, y


def total_samples(data: Any) -> int | None:
    """How many samples ``data`` holds, when it says so (a whole pair, or a DataLoader's dataset); else None."""
    if is_whole_pair(data):
        return int(data[0].shape[0])
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None
