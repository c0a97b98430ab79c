"""ConversionContext: what plugins see during conversion.

It holds the traced reference ANN (the *untouched* copy: corrections compare against it and
never edit it), the activation sites in topological order, the conversion's T, the recipe,
and the calibration data. :meth:`ConversionContext.collect` gathers observer statistics
(:mod:`snnbridge.observers`) over the calibration batches with a progress bar, and caches
them so plugins asking for the same statistic share one pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .corrections import calibrated_timesteps
from .errors import CalibrationError
from .graph import ConversionGraph, site_attr
from .observers import Observer
from .sites import SiteInfo

_INPUT_KEYS = ("input", "inputs", "image", "images", "img", "x", "pixel_values", "data")

#: ``fn(site_name, site_input, site_output) -> replacement output or None`` (see ConversionContext.hooks)
SiteHook = Callable[[str, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


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

    def __init__(self, graph: ConversionGraph, *, timesteps: int, calibration: Iterable | None = None,
                 max_batches: int | None = None, device: torch.device | None = None, progress: bool = True,
                 recipe=None, backend: str = "torch", seed: int = 0):
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

    def take(self, samples: int | None = None, *, limit: int | None = None, desc: str = "calibration") -> list[torch.Tensor]:
        """Calibration batches holding ``samples`` images in all (the last batch cut), or every batch when None."""
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
        with self.hooks(lambda n, i, o: out.__setitem__(n, (n, i, o)[pick].detach())):
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
        """
        if where not in ("output", "input"):
            raise ValueError(f"where must be 'output' or 'input', got {where!r}")
        key = (observer.key(), where, limit)
        if batches is None and key in self._cache:
            return self._cache[key]
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
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
        out = {name: obs.compute() for name, obs in per_site.items()}
        if batches is None:
            self._cache[key] = out
        return out

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
