"""ConversionContext: what plugins see during conversion.

It holds the traced reference ANN (the *untouched* copy: corrections compare against it and
never edit it), the activation sites in topological order, the conversion's T, the recipe,
and the calibration data. :meth:`ConversionContext.collect` gathers observer statistics
(:mod:`snnbridge.observers`) over the calibration batches with a progress bar, and caches
them so plugins asking for the same statistic share one pass.

Calibration data is a DataLoader or any iterable of batches (tensors, ``(input, target)``
pairs or dicts), or, for convenience, the samples themselves (see :func:`calibration_batches`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .batches import INPUT_KEYS, is_whole_pair, split_item
from .corrections import calibrated_timesteps
from .errors import CalibrationError
from .graph import ConversionGraph, site_attr
from .observers import Observer
from .progress import bar as _bar
from .sites import SiteInfo

#: ``fn(site_name, site_input, site_output) -> replacement output or None`` (see ConversionContext.hooks)
SiteHook = Callable[[str, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def _is_pair(data: Any) -> bool:
    """``(inputs, targets)`` given as a *tuple* (a TensorDataset's tensors): calibration reads a list as batches."""
    return isinstance(data, tuple) and is_whole_pair(data)


#: batch size for calibration data given as samples (see :func:`calibration_batches`)
DEFAULT_BATCH_SIZE = 128


def given_as_samples(data: Any) -> bool:
    """True for calibration data that holds samples rather than batches: a tensor, an ``(x, y)`` pair, a Dataset."""
    return isinstance(data, (torch.Tensor, Dataset)) or _is_pair(data)


def calibration_batches(data: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """Calibration data as batches: samples given as one tensor are split, everything else is kept as it is.

    * a tensor ``[N, ...]`` holds N samples: it becomes batches of ``batch_size`` samples
      (a tensor is one set of samples, never a sequence of batches);
    * a tuple of two tensors with one entry per sample, ``(inputs [N, ...], targets [N, ...])``
      whose per-sample shapes differ, is such a set of samples with its labels (only the
      inputs are used);
    * a Dataset (e.g. a ``TensorDataset``, which yields one sample at a time) is read through a
      DataLoader with batches of ``batch_size`` samples, in order;
    * a list of tensors, a DataLoader or any other iterable is read as batches.

    A 0-D or 1-D tensor is a :class:`~snnbridge.errors.CalibrationError`: it has no batch dimension.
    """
    if _is_pair(data):
        data = data[0]
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        _check_batch_size(batch_size)
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, torch.Tensor):
        return data
    if data.dim() < 2:
        raise CalibrationError(
            f"calibration is a {data.dim()}-D tensor of shape {tuple(data.shape)}; a calibration tensor holds samples "
            "along its first dimension, [N, C, H, W] for images or [N, features]. Add the batch dimension "
            "(x.unsqueeze(0) for one sample), or pass a DataLoader / list of batches.")
    _check_batch_size(batch_size)
    return list(data.split(batch_size))


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CalibrationError(f"calibration_batch_size must be a positive whole number, got {batch_size!r}.")


def batch_input(batch: Any) -> torch.Tensor:
    """The input tensor of one calibration item: a tensor, ``(input, target)`` or a dict."""
    x = split_item(batch)[0]
    if x is not None:
        return x
    raise CalibrationError(
        f"a calibration item is a {type(batch).__name__}; snnbridge takes a DataLoader or iterable yielding tensors, "
        f"(input, target) tuples, or dicts with one of the keys {', '.join(INPUT_KEYS)}.")


#: without ``calibration_batches``, a calibration iterable without a length may yield at most this many
#: batches (more is taken for an endless iterator, e.g. a generator or a DataLoader over an infinite sampler)
MAX_UNSIZED_BATCHES = 1000
#: and a one-shot iterator (kept in memory, since every stage re-reads the data) at most this many bytes
MAX_KEPT_BYTES = 4 << 30


def _endless(what: str) -> CalibrationError:
    return CalibrationError(f"the calibration data {what} and has no length, so it may be endless (a generator, "
                            "itertools.cycle, a DataLoader over an infinite sampler); pass calibration_batches=N to "
                            "use its first N batches, or give a list or a sized DataLoader.")


def _keep(iterator, max_batches: int | None) -> list:
    """The batches of a one-shot iterator, kept (stages re-read them), refusing what looks endless."""
    if max_batches is not None:
        return [b for _, b in zip(range(max_batches), iterator)]
    kept, size = [], 0
    for item in iterator:
        kept.append(item)
        size += sum(t.numel() * t.element_size() for t in (item if isinstance(item, (tuple, list)) else (item,))
                    if isinstance(t, torch.Tensor))
        if len(kept) > MAX_UNSIZED_BATCHES:
            raise _endless(f"yielded more than {MAX_UNSIZED_BATCHES} batches")
        if size > MAX_KEPT_BYTES:
            raise _endless(f"yielded more than {MAX_KEPT_BYTES >> 30} GiB")
    return kept


class ConversionContext:
    """Shared state of one conversion (see the module docstring)."""

    def __init__(self, graph: ConversionGraph, *, timesteps: int, calibration: Iterable | None = None,
                 max_batches: int | None = None, device: torch.device | None = None, progress: bool = True,
                 recipe=None, backend: str = "torch", seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE):
        self.graph = graph
        self.ann: nn.Module = graph.module
        self.sites: dict[str, SiteInfo] = graph.sites
        self.timesteps = timesteps
        self.recipe = recipe
        self.backend = backend
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.max_batches = max_batches
        self.seed = seed
        self.report: dict[str, Any] = {"notes": []}
        #: what a plugin hands from one of its hooks to a later one in this conversion (key: the plugin's name)
        self.plugin_data: dict[str, Any] = {}
        if calibration is not None:
            calibration = calibration_batches(calibration, batch_size)
        if calibration is not None and iter(calibration) is calibration:
            # a one-shot iterator (e.g. a generator): several stages re-read the calibration data, so keep it
            calibration = _keep(calibration, max_batches)
        self._calibration = calibration
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self.input_shape: tuple[int, ...] | None = None
        self.ann.to(self.device)
        if distributed.active() and calibration is not None:  # before any collective could wait for a missing batch
            distributed.check_same(self._batch_count(), "the number of calibration batches",
                                   "give every rank the same number of batches: a DataLoader over a "
                                   "DistributedSampler (drop_last=False) pads the shards to one size, or pass "
                                   "calibration_batches=N.")

    def _batch_count(self) -> int | None:
        try:
            n = len(self._calibration)  # type: ignore[arg-type]
        except TypeError:
            return self.max_batches
        return n if self.max_batches is None else min(n, self.max_batches)

    # -- data ----------------------------------------------------------------------------------------
    def progress_bar(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None,
                     unit: str = "it"):
        """A tqdm bar for a plugin's loop: shown only when ``progress`` is on and the loop takes a while.

        Honours ``convert(progress=False)`` and ``TQDM_DISABLE=1`` (see :mod:`snnbridge.progress`).
        """
        return _bar(iterable, desc=desc, enabled=self.progress, total=total, unit=unit)

    @property
    def has_data(self) -> bool:
        """Whether calibration data was given."""
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
        bar = self.progress_bar(desc=desc, total=total, unit="batch")
        try:
            for item in self._calibration:
                x = batch_input(item)
                if not torch.is_floating_point(x):
                    raise CalibrationError(
                        f"calibration batch {n + 1} is a {x.dtype} tensor; give floating-point inputs prepared as for "
                        "training: x.float() (uint8 images: x.float() / 255, then the training mean/std, e.g. "
                        "torchvision.transforms.ToTensor + Normalize).")
                if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
                    raise CalibrationError(
                        f"calibration batch {n + 1} holds samples shaped {list(x.shape[1:])}, earlier ones "
                        f"{list(self.input_shape)}; every batch needs the same sample shape: resize or crop the "
                        "images to one size (the SNN runs on that size).")
                if not torch.isfinite(x).all():
                    raise CalibrationError(f"calibration batch {n + 1} contains NaN or Inf; clean the data before "
                                           "converting.")
                if self.input_shape is None:
                    self.input_shape = tuple(x.shape[1:])
                n += 1
                if total is None and cap is None and n > MAX_UNSIZED_BATCHES:
                    raise _endless(f"yielded more than {MAX_UNSIZED_BATCHES} batches")
                bar.update(1)
                yield x.to(self.device)
                if cap is not None and n >= cap:
                    break  # before fetching another item from the data
        finally:
            bar.close()
        if n == 0:
            raise CalibrationError("the calibration data yielded no batches; pass a non-empty DataLoader or list.")

    def take(self, samples: int | None = None, *, limit: int | None = None,
             desc: str = "calibration") -> list[torch.Tensor]:
        """Calibration batches holding ``samples`` images in all (the last batch cut), or every batch when None.

        In a distributed conversion ``samples`` counts over all ranks: each rank takes its share
        (``samples // world``, one more on the first ``samples % world`` ranks) of its own shard.
        """
        if samples is not None and distributed.active():
            world, rank = distributed.world_size(), distributed.rank()
            samples = samples // world + (1 if rank < samples % world else 0)
        out, have = [], 0
        for x in self.batches(desc=desc, limit=limit):
            if samples is not None and have + x.shape[0] > samples:
                x = x[: samples - have]
            out.append(x)
            have += x.shape[0]
            if samples is not None and have >= samples:
                break
        return out

    def timesteps_for(self, options: dict[str, Any]) -> int:
        """The T a T-specific plugin calibrates for: its ``timesteps`` option, else the conversion's T."""
        return calibrated_timesteps(options, self.timesteps)

    # -- the reference ANN ---------------------------------------------------------------------------------
    def site_module(self, name: str):
        """The :class:`~snnbridge.sites.ActivationSite` of ``name`` in the reference ANN (read it, don't edit it)."""
        return self.ann.get_submodule(site_attr(name))

    @contextmanager
    def hooks(self, fn: SiteHook, sites: Iterable[str] | None = None):
        """Call ``fn(site, input, output)`` at every site (or the given ones) during ANN forwards in the block.

        Return ``None`` to observe only; return a tensor to replace the site's output for
        the layers after it (e.g. a clipped activation, as local threshold balancing needs).
        """
        handles = []
        for name in (self.sites if sites is None else sites):
            def hook(module, inputs, output, name=name):
                return fn(name, inputs[0], output)
            handles.append(self.site_module(name).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def site_activations(self, x: torch.Tensor, where: str = "output") -> dict[str, torch.Tensor]:
        """Run the reference ANN on ``x`` and return every site's output (or input) tensor."""
        out: dict[str, torch.Tensor] = {}
        pick = 2 if where == "output" else 1
        with self.hooks(lambda n, i, o: out.__setitem__(n, (i, o)[pick - 1].detach())):
            self.ann(x.to(self.device))
        return out

    @torch.no_grad()
    def collect(self, observer: Observer, *, where: str = "output", limit: int | None = None,
                batches: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run the calibration batches through the reference ANN and return ``observer``'s result per site.

        A fresh copy of ``observer`` watches every site's output (``where="input"``: its
        input). Results are cached by ``observer.key()``, ``where`` and ``limit``, so several
        plugins asking for the same statistic share one pass. ``batches`` observes these
        batches instead of the calibration data (not cached).

        In a distributed conversion each rank observes its own batches and every observer is
        reduced across the ranks (:meth:`~snnbridge.observers.Observer.reduce`) before it computes,
        so every rank gets the statistic of the union.
        """
        if where not in ("output", "input"):
            raise ValueError(f"where must be 'output' or 'input', got {where!r}")
        key = (observer.key(), where, limit)
        if batches is None and key in self._cache:
            return self._cache[key]
        # ranks draw independent random keys (reservoir samples); rank 0 and a single process draw the same
        generator = torch.Generator(device="cpu").manual_seed(self.seed + 1_000_003 * distributed.rank())
        per_site: dict[str, Observer] = {}
        for name in self.sites:
            per_site[name] = observer.fresh()
            per_site[name].generator = generator
        seen: set[str] = set()

        def observe(name, x_in, x_out):
            t = x_out if where == "output" else x_in
            if not torch.isfinite(t).all():
                raise CalibrationError(f"activation site {name!r} produced NaN/Inf on the calibration data; check the "
                                       "model's weights (or BatchNorm running statistics) before converting.")
            info = self.sites[name]
            if info.shape is None:
                info.shape = tuple(t.shape[1:])
            per_site[name].observe(t)
            seen.add(name)

        with self.hooks(observe):
            for x in (batches if batches is not None else self.batches(desc=f"collect {observer.label}", limit=limit)):
                self.ann(x.to(self.device))
        missing = [n for n in self.sites if n not in seen]
        if missing:
            raise CalibrationError(f"activation site {missing[0]!r} was never reached by the calibration data; check "
                                   "that the model's forward uses it.")
        if distributed.active():
            for obs in per_site.values():
                try:
                    obs.reduce()
                except NotImplementedError as exc:
                    raise CalibrationError(str(exc)) from None
        out = {name: obs.compute() for name, obs in per_site.items()}
        if batches is None:
            self._cache[key] = out
        return out

    # -- across processes ------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Ranks taking part in this conversion (1 in one process; see :mod:`snnbridge.distributed`)."""
        return distributed.world_size()

    @property
    def rank(self) -> int:
        """This process's rank (0 in one process)."""
        return distributed.rank()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (``t`` itself in one process): for counts and sums of a plugin's own loop."""
        return distributed.all_sum(t)

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of ``t`` over the ranks."""
        return distributed.all_max(t)

    def all_mean(self, mean: torch.Tensor, count: int | float) -> torch.Tensor:
        """The mean over every rank's data from this rank's ``mean`` of ``count`` values (a batch's union mean)."""
        return distributed.all_mean(mean, count)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``[N_r, ...]`` tensor joined along dim 0 in rank order (sizes may differ)."""
        return distributed.all_gather_cat(t)

    def usable_threshold(self, site: str, values: torch.Tensor | float, plugin: str) -> torch.Tensor | float:
        """Make an estimated threshold valid: replace channels that never activated (<= 0) and say so.

        A channel whose activation is never positive on the calibration data would get a zero
        threshold (its neurons would fire on every step); it gets the largest threshold of its
        site instead (1.0 if the whole site is silent), and the conversion report notes it.
        """
        if not isinstance(values, torch.Tensor):
            values = torch.tensor(float(values))
        if values.dim() == 0:
            v = float(values)
            if v > 0:
                return v
            self.report["notes"].append(f"{plugin}: site {site} never activated on the calibration data; threshold "
                                        "set to 1.0")
            return 1.0
        dead = values <= 0
        if dead.any():
            fill = float(values.max()) if float(values.max()) > 0 else 1.0
            self.report["notes"].append(f"{plugin}: {int(dead.sum())} channel(s) of site {site} never activated; "
                                        f"their threshold is set to {fill:.4g}")
            values = torch.where(dead, torch.full_like(values, fill), values)
        return values

    @torch.no_grad()
    def infer_shapes(self, example: torch.Tensor) -> None:
        """Fill in each site's activation shape from one example batch."""
        acts = self.site_activations(example[:1])
        for name, t in acts.items():
            self.sites[name].shape = tuple(t.shape[1:])
        self.input_shape = tuple(example.shape[1:])
