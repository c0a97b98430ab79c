"""ConversionContext: what plugins see during conversion.

It holds the prepared reference ANN (the *untouched* copy: corrections compare against
it and never edit it), the activation sites in topological order, the conversion's T, and
the calibration data. :meth:`ConversionContext.collect` gathers activation statistics over
the calibration batches, with a tqdm progress bar, and caches them so several plugins
share one pass.

Statistics are generic (no method math): the true global maximum (never a running
average), the mean, and a uniform random sample of activation values (a reservoir; all
values when there are fewer than ``max_samples``), layer-wise or per channel.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import CalibrationError
from .graph import PreparedGraph, site_attr
from .sites import SiteInfo

_INPUT_KEYS = ("input", "inputs", "image", "images", "img", "x", "pixel_values", "data")


def batch_input(batch: Any) -> torch.Tensor:
    """The input tensor of one calibration item: a tensor, ``(input, target)`` or a dict."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for k in _INPUT_KEYS:
            if isinstance(batch.get(k), torch.Tensor):
                return batch[k]
    raise CalibrationError(
        f"a calibration item is a {type(batch).__name__}; snnbridge takes a DataLoader or iterable yielding tensors, "
        f"(input, target) tuples, or dicts with one of the keys {', '.join(_INPUT_KEYS)}.")


class ConversionContext:
    """Shared state of one conversion (see the module docstring)."""

    def __init__(self, prepared: PreparedGraph, *, timesteps: int, calibration: Iterable | None = None,
                 max_batches: int | None = None, device: torch.device | None = None, progress: bool = True,
                 recipe=None, backend: str = "torch", seed: int = 0):
        self.prepared = prepared
        self.ann: nn.Module = prepared.module
        self.sites: dict[str, SiteInfo] = prepared.sites
        self.timesteps = timesteps
        self.recipe = recipe
        self.backend = backend
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.max_batches = max_batches
        self.seed = seed
        self.report: dict[str, Any] = {"notes": []}
        if calibration is not None and not isinstance(calibration, torch.Tensor) and iter(calibration) is calibration:
            # a one-shot iterator (e.g. a generator): several stages re-read the calibration data, so keep it
            calibration = list(calibration) if max_batches is None else [b for _, b in zip(range(max_batches), calibration)]
        self._calibration = calibration
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self.input_shape: tuple[int, ...] | None = None
        self.ann.to(self.device)

    # -- data ----------------------------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        return self._calibration is not None

    def batches(self, desc: str = "calibration", limit: int | None = None) -> Iterator[torch.Tensor]:
        """Yield calibration inputs on the conversion device, with a progress bar.

        ``limit`` caps the number of batches (also capped by ``convert(calibration_batches=)``).
        Can be called several times; the data is re-iterated each time (a one-shot iterator
        passed as calibration data is kept in memory on first use for that reason).
        """
        if self._calibration is None:
            raise CalibrationError("this step needs calibration data; pass calibration=<DataLoader or list of batches> "
                                   "to snnbridge.convert.")
        caps = [c for c in (limit, self.max_batches) if c is not None]
        cap = min(caps) if caps else None
        total = None
        try:
            total = len(self._calibration)  # type: ignore[arg-type]
            total = min(total, cap) if cap is not None else total
        except TypeError:
            total = cap
        n = 0
        bar = tqdm(total=total, desc=desc, unit="batch", disable=not self.progress, leave=False)
        try:
            for item in self._calibration:
                x = batch_input(item)
                if not torch.is_floating_point(x):
                    x = x.float()
                if not torch.isfinite(x).all():
                    raise CalibrationError(f"calibration batch {n + 1} contains NaN or Inf; clean the data before "
                                           "converting.")
                if self.input_shape is None:
                    self.input_shape = tuple(x.shape[1:])
                n += 1
                bar.update(1)
                yield x.to(self.device)
                if cap is not None and n >= cap:
                    break  # before fetching another item from the data
        finally:
            bar.close()
        if n == 0:
            raise CalibrationError("the calibration data yielded no batches; pass a non-empty DataLoader or list.")

    # -- observation ------------------------------------------------------------------------------------
    def site_module(self, name: str):
        """The :class:`~snnbridge.sites.ActivationSite` of ``name`` in the reference ANN (read it, don't edit it)."""
        return self.ann.get_submodule(site_attr(name))

    @contextmanager
    def hooks(self, fn, where: str = "output"):
        """Temporarily call ``fn(site_name, tensor)`` on each site's output (or input) in the reference ANN."""
        handles = []
        for name in self.sites:
            module = self.ann.get_submodule(site_attr(name))
            if where == "output":
                handles.append(module.register_forward_hook(lambda m, i, o, n=name: fn(n, o)))
            else:
                handles.append(module.register_forward_hook(lambda m, i, o, n=name: fn(n, i[0])))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def site_activations(self, x: torch.Tensor, where: str = "output") -> dict[str, torch.Tensor]:
        """Run the reference ANN on ``x`` and return every site's output (or input) tensor."""
        out: dict[str, torch.Tensor] = {}
        with self.hooks(lambda n, t: out.__setitem__(n, t.detach()), where):
            self.ann(x.to(self.device))
        return out

    @torch.no_grad()
    def collect(self, stat: str = "max", *, where: str = "output", channelwise: bool = False,
                max_samples: int = 1 << 20, limit: int | None = None) -> dict[str, torch.Tensor]:
        """Activation statistics per site over the calibration batches (cached).

        ``stat``: ``"max"`` (true global maximum), ``"mean"``, or ``"samples"`` (uniform random
        sample of up to ``max_samples`` values per site, or per channel when ``channelwise``;
        all values when there are fewer). Channel-wise results have the channel first:
        ``[C]`` for max/mean, ``[C, n]`` for samples.
        """
        if stat not in ("max", "mean", "samples"):
            raise ValueError(f"unknown statistic {stat!r}; use 'max', 'mean' or 'samples'")
        key = (stat, where, channelwise, max_samples, limit)
        if key in self._cache:
            return self._cache[key]
        acc: dict[str, Any] = {}
        gen = torch.Generator(device="cpu").manual_seed(self.seed)

        def observe(name: str, t: torch.Tensor):
            if not torch.isfinite(t).all():
                raise CalibrationError(f"activation site {name!r} produced NaN/Inf on the calibration data; check the "
                                       "model's weights (or BatchNorm running statistics) before converting.")
            info = self.sites[name]
            if info.shape is None:
                info.shape = tuple(t.shape[1:])
            v = t.detach().float()
            if channelwise:
                v = v.transpose(0, 1).reshape(v.shape[1], -1)  # [C, N]
            else:
                v = v.reshape(1, -1)
            if stat == "max":
                m = v.amax(dim=1)
                acc[name] = m if name not in acc else torch.maximum(acc[name], m)
            elif stat == "mean":
                s, c = v.sum(dim=1, dtype=torch.float64), v.shape[1]
                prev = acc.get(name, (0.0, 0))
                acc[name] = (prev[0] + s, prev[1] + c)
            else:
                keys = torch.rand(v.shape, generator=gen).to(v.device)
                if name in acc:
                    pv, pk = acc[name]
                    v, keys = torch.cat([pv, v], 1), torch.cat([pk, keys], 1)
                if v.shape[1] > max_samples:
                    keys, idx = torch.topk(keys, max_samples, dim=1, largest=False)
                    v = torch.gather(v, 1, idx)
                acc[name] = (v, keys)

        with self.hooks(observe, where):
            for x in self.batches(desc=f"collect {stat}", limit=limit):
                self.ann(x)
        out = {}
        for name in self.sites:
            if name not in acc:
                raise CalibrationError(f"activation site {name!r} was never reached by the calibration data; check "
                                       "that the model's forward uses it.")
            a = acc[name]
            if stat == "mean":
                a = (a[0] / a[1]).float()
            elif stat == "samples":
                a = a[0]
            out[name] = a if channelwise else (a[0] if stat != "samples" else a[0])
        self._cache[key] = out
        return out

    @torch.no_grad()
    def infer_shapes(self, example: torch.Tensor) -> None:
        """Fill in each site's activation shape from one example batch."""
        acts = self.site_activations(example[:1])
        for name, t in acts.items():
            self.sites[name].shape = tuple(t.shape[1:])
        self.input_shape = tuple(example.shape[1:])
