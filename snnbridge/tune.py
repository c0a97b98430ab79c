"""``snnbridge.tune``: the best recipe per T, chosen on held-out calibration batches.

    result = snnbridge.tune(ann, calibration, timesteps=[4, 8])
    snn = snnbridge.convert(ann, result.best[8], calibration=calibration, timesteps=8)

Candidates come from the registry, not from a list of names: the threshold sources
(plugins that provide ``threshold``, or offer it as a fallback) alone and stacked with the
other method plugins, up to ``max_stack`` plugins per recipe, each plugin with the option
sets it lists in ``snnbridge_tune_variants`` (one plugin at a time off its first set). A
network prepared for training by a plugin that provides ``activation`` (its modules are
claimed by that plugin, e.g. QCFS) gets that plugin as its only threshold source; a plain
network gets the training-free sources. :func:`snnbridge.build_recipe` decides which
combinations are valid (the refused ones are counted in ``result.rejected``).

Only the first ``len(batches) - holdout_batches`` calibration batches reach
:func:`snnbridge.convert`; the last ``holdout_batches`` score each candidate (agreement of the
SNN's predicted class with the ANN's, or accuracy when the batches carry labels). Recipes
without a T-specific plugin are converted once, for the largest T, and scored at every T from
one ``sweep`` (after checking that converting for the smallest T gives the same SNN bit for
bit: a plugin may adapt to the conversion's T without being T-specific); T-specific ones are
converted once per T. So ``convert(ann, result.best[T], timesteps=T)`` on the same calibration
batches gives the SNN that was scored. Candidates run cheap-first (T-independent before
T-specific, a plugin's first option set before its others, fewer plugins first) until
``budget_s`` is spent. Ties go to fewer simulated steps, then to the earlier (cheaper)
candidate, then to the recipe text.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .batches import is_labels, split_item
from .context import DEFAULT_BATCH_SIZE, _is_pair, _keep, batch_input, calibration_batches
from .convert import check_timesteps, convert
from .distributed import model_checksum
from .errors import (
    BackendError,
    CalibrationError,
    InputError,
    MissingRequirementError,
    OptionError,
    PluginConflictError,
    PluginError,
    SnnbridgeError,
    UnsupportedModelError,
)
from .factory import make_neuron_factory
from .plugin_manager import Registry, get_registry
from .progress import bar as progress_bar
from .recipe import Recipe, _entries, build_recipe

SCORES = ("auto", "accuracy", "agreement")
#: errors about the model, the data or the backend: every candidate would fail the same way, so tune stops
_FATAL = (CalibrationError, UnsupportedModelError, BackendError)


# -- candidates --------------------------------------------------------------------------------------


def _variants(registry: Registry, name: str) -> list[dict[str, Any]]:
    """The option sets plugin ``name`` asks tune to try (``[{}]`` without the hook)."""
    got = registry.call(name, "snnbridge_tune_variants", default=None)
    if got is None:
        return [{}]
    if not isinstance(got, (list, tuple)) or not got or not all(isinstance(v, Mapping) for v in got):
        raise PluginError(f"plugin {name!r}: snnbridge_tune_variants must return a non-empty list of option dicts "
                          f"(e.g. [{{}}, {{'channelwise': True}}]), got {got!r}. Fix the plugin, or disable it for "
                          "tune with disable=[...].")
    return [dict(v) for v in got]


def _prepared_for(ann: nn.Module, registry: Registry, names: Iterable[str]) -> list[str]:
    """The plugins among ``names`` that claim some module of ``ann`` (the network was prepared with them)."""
    modules = list(ann.modules())
    return [n for n in names
            if any(registry.call(n, "snnbridge_claim_module", default=None, module=m) is not None for m in modules)]


def _key(recipe: Recipe) -> str:
    return json.dumps(recipe.to_list(), sort_keys=True, default=repr)


def candidate_recipes(ann: nn.Module, *, registry: Registry | None = None, max_stack: int = 3
                      ) -> tuple[list[Recipe], list[dict[str, Any]]]:
    """The automatic candidates for ``ann``, cheap-first, and the combinations the recipe rules refused.

    See the module docstring for how they are formed. Returns ``(recipes, rejected)`` with
    ``rejected`` a list of ``{"recipe": plain data, "error": message}``.
    """
    registry = registry or get_registry()
    methods = registry.names("method")
    infos = {n: registry.info(n) for n in methods}
    activation = [n for n in methods if "activation" in infos[n].provides]
    prepared = _prepared_for(ann, registry, activation)
    if prepared:
        sources = prepared
    else:
        sources = [n for n in methods if n not in activation
                   and ("threshold" in infos[n].provides or "threshold" in infos[n].fallback)]
    # add-ons: methods that do not set thresholds themselves; configure-only first, T-specific last
    addons = sorted((n for n in methods if n not in activation and "threshold" not in infos[n].provides),
                    key=lambda n: (registry.implements(n, "snnbridge_correct_error"), infos[n].t_specific, n))
    variants = {n: _variants(registry, n) for n in set(sources) | set(addons)}
    found: list[tuple[tuple[int, int, int, int], Recipe]] = []
    seen: set[str] = set()
    rejected: list[dict[str, Any]] = []
    for source in sources:
        others = [a for a in addons if a != source]
        for size in range(0, max(0, max_stack - 1) + 1):
            for subset in itertools.combinations(others, size):
                members = [source, *subset]
                settings = [dict.fromkeys(members, 0)]
                settings += [{**dict.fromkeys(members, 0), m: j} for m in members for j in range(1, len(variants[m]))]
                for choice in settings:
                    recipe, error = None, None
                    for order in itertools.permutations(members):
                        entries = [{n: variants[n][choice[n]]} for n in order]
                        try:
                            recipe = build_recipe(entries, registry=registry)
                            break
                        except (PluginConflictError, MissingRequirementError, OptionError) as exc:
                            error = error or str(exc)
                    if recipe is None:
                        rejected.append({"recipe": [{n: variants[n][choice[n]]} for n in members], "error": error})
                        continue
                    key = _key(recipe)
                    if key in seen:
                        continue
                    seen.add(key)
                    per_t = int(any(e.info.t_specific for e in recipe.entries))
                    found.append(((per_t, max(choice.values()), len(members), len(found)), recipe))
    found.sort(key=lambda item: item[0])
    return [r for _, r in found], rejected


def _given(recipes: Any, registry_objects: list, what: str) -> list[Any]:
    """The user's candidate list as a list of recipes (collecting plugin objects for the registry)."""
    if recipes is None:
        return []
    if isinstance(recipes, (str, Mapping, Recipe)) or not isinstance(recipes, Iterable):
        raise InputError(f"{what} must be a list of recipes, e.g. [['maxnorm'], ['robustnorm', 'opi']], got "
                         f"{type(recipes).__name__} {recipes!r}; wrap a single recipe in a list.")
    out = list(recipes)
    for r in out:
        if not isinstance(r, Recipe):
            registry_objects += [e for e, _ in _entries(r) if not isinstance(e, str)]
    return out


def _build_given(recipes: list[Any], registry: Registry, what: str) -> list[Recipe]:
    built = []
    for i, r in enumerate(recipes):
        try:
            built.append(r if isinstance(r, Recipe) else build_recipe(r, registry=registry))
        except SnnbridgeError as exc:
            raise type(exc)(f"{what} {i + 1} ({r!r}): {exc}") from exc
    return built


# -- data --------------------------------------------------------------------------------------------


def _labels(item: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Class labels of one batch item, if it carries them (``(x, y)`` or a dict with a label key)."""
    y = split_item(item)[1]
    return y if y is not None and is_labels(y, x) else None


def _split_batches(calibration: Any, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The calibration data as ``(inputs, labels or None)`` batches, read once, in the order given."""
    if calibration is None:
        raise InputError("tune needs calibration data: pass a DataLoader or list of batches (with (x, y) batches "
                         "the candidates are scored by accuracy on the held-out ones).")
    if _is_pair(calibration):
        x, y = calibration
        return list(zip(x.split(batch_size), y.split(batch_size)))
    if isinstance(calibration, torch.Tensor):
        return [(b, None) for b in calibration_batches(calibration, batch_size)]
    if isinstance(calibration, Dataset):
        calibration = DataLoader(calibration, batch_size=batch_size, shuffle=False)
    items = _keep(iter(calibration), None)
    out = []
    for item in items:
        x = batch_input(item)
        out.append((x, _labels(item, x)))
    return out


def _timesteps(timesteps: Any) -> list[int]:
    values = [timesteps] if isinstance(timesteps, int) else timesteps
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InputError(f"timesteps must be a whole number or a list of them (e.g. [4, 8]), got {timesteps!r}.")
    out = sorted({check_timesteps(t) for t in values})
    if not out:
        raise InputError("timesteps is empty; give the T values to tune for, e.g. timesteps=[4, 8].")
    return out


def _device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


# -- scoring -----------------------------------------------------------------------------------------


@torch.no_grad()
def _measure(snn, held: list[tuple[torch.Tensor, torch.Tensor | None]], targets: list[torch.Tensor],
             timesteps: list[int]) -> dict[int, dict[str, float | None]]:
    """Agreement with the ANN, accuracy (when labelled) and output MSE at every T, from one sweep per batch."""
    top = max(timesteps)
    agree = dict.fromkeys(timesteps, 0)
    right = dict.fromkeys(timesteps, 0)
    err = dict.fromkeys(timesteps, 0.0)
    n = 0
    labelled = all(y is not None for _, y in held)
    for (x, y), a in zip(held, targets):
        curve = snn.sweep(x, timesteps=top)  # [T, B, K]: the decoded output after 1..T steps
        for t in timesteps:
            out = curve[t - 1]
            agree[t] += int((out.argmax(-1) == a.argmax(-1)).sum())
            if y is not None:
                right[t] += int((out.argmax(-1).cpu() == y.cpu()).sum())
            err[t] += float(((out - a) ** 2).flatten(1).mean(1).sum())
        n += x.shape[0]
    return {t: {"agreement": agree[t] / n, "accuracy": right[t] / n if labelled else None, "mse": err[t] / n}
            for t in timesteps}


def _text(recipe: list) -> str:
    return json.dumps(recipe, sort_keys=True, default=repr)


def _rank(row: dict[str, Any]) -> tuple:
    """Best first: higher score, then fewer simulated steps, then the cheaper candidate, then the recipe text."""
    return (-row["score"], row["steps_run"], row["candidate"], _text(row["recipe"]))


# -- result ------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What :func:`tune` found: the winner per T and every measurement behind it (plain data).

    ``best`` maps each T to the winning recipe as plain data that :func:`snnbridge.convert`
    accepts (``result.best[8]``). ``rows`` has one entry per candidate and T: ``candidate``
    (its index, cheap-first), ``recipe``, ``label``, ``T``, ``converted_for`` (the T it was
    converted for), ``score``, ``agreement``, ``accuracy`` (None without labels), ``mse``
    (output vs the ANN), ``conversion_seconds``, ``steps_run``, ``started_s`` (seconds after
    the start of tune) and ``error`` (the message when the conversion failed, else None).
    ``skipped``: candidates left out when the budget was spent; ``rejected``: combinations the
    recipe rules refused.
    """

    best: dict[int, list]
    rows: list[dict[str, Any]]
    timesteps: list[int]
    score: str
    backend: str
    seed: int
    holdout: dict[str, int]
    ann_score: float | None
    candidates: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    budget_s: float | None = None
    seconds: float = 0.0
    backend_options: dict[str, Any] = field(default_factory=dict)

    def best_row(self, timesteps: int) -> dict[str, Any]:
        """The row of the winner at ``timesteps`` (its score, conversion time, steps run ...)."""
        if timesteps not in self.best:
            raise InputError(f"tune was run for T = {', '.join(map(str, self.timesteps))}, not {timesteps}; "
                             "run it again with that T in timesteps.")
        return min((r for r in self.rows if r["T"] == timesteps and r["error"] is None), key=_rank)

    def to_json(self) -> dict[str, Any]:
        """Everything as JSON-ready data (T keys as strings)."""
        data = {"timesteps": self.timesteps, "score": self.score, "backend": self.backend,
                "backend_options": self.backend_options, "seed": self.seed, "holdout": self.holdout,
                "ann_score": self.ann_score, "candidates": self.candidates, "budget_s": self.budget_s,
                "seconds": self.seconds, "best": {str(t): r for t, r in self.best.items()}, "rows": self.rows,
                "skipped": self.skipped, "rejected": self.rejected}
        return json.loads(json.dumps(data, default=repr))

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    def _by_candidate(self) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for r in self.rows:
            out.setdefault(r["candidate"], []).append(r)
        return out

    def table(self) -> str:
        """A Markdown table: one line per candidate, its score at every T (the winners in bold)."""
        winners = {(self.best_row(t)["candidate"], t) for t in self.best}
        head = (f"Score: {self.score} on {self.holdout['samples']} held-out calibration samples "
                f"({self.holdout['batches']} batch(es); {self.holdout['fit_batches']} batch(es) calibrate)"
                + (f"; ANN {100 * self.ann_score:.2f} %" if self.ann_score is not None else "") + ".")
        lines = [head, "", "| # | recipe | " + " | ".join(f"T={t}" for t in self.timesteps)
                 + " | conversion (s) | steps run |", "|---|---|" + "---|" * len(self.timesteps) + "---|---|"]
        for cand, rows in self._by_candidate().items():
            by_t = {r["T"]: r for r in rows}
            cells = []
            for t in self.timesteps:
                r = by_t.get(t)
                if r is None:
                    cells.append("")
                elif r["error"] is not None:
                    cells.append("failed")
                else:
                    text = f"{100 * r['score']:.2f} %"
                    cells.append(f"**{text}**" if (cand, t) in winners else text)
            seconds = sum({r["converted_for"]: r["conversion_seconds"] for r in rows}.values())  # one per conversion
            steps = " / ".join(str(by_t[t]["steps_run"]) if t in by_t and by_t[t]["steps_run"] is not None else "-"
                               for t in self.timesteps)
            lines.append(f"| {cand + 1} | {rows[0]['label']} | " + " | ".join(cells) + f" | {seconds:.2f} | {steps} |")
        failed = {r["candidate"]: r["error"] for r in self.rows if r["error"] is not None}
        for cand, error in failed.items():
            lines.append(f"\nCandidate {cand + 1} failed: {error}")
        if self.skipped:
            lines.append(f"\n{len(self.skipped)} candidate(s) skipped: the budget of {self.budget_s:g} s was spent.")
        if self.rejected:
            lines.append(f"\n{len(self.rejected)} combination(s) refused by the recipe rules (see rejected).")
        return "\n".join(lines)

    def plot(self, path: str | Path, top: int = 8) -> Path:
        """Score vs T per candidate (the ``top`` best in colour) and score vs conversion time; returns the path."""
        from matplotlib.ticker import NullFormatter

        from .plots import COLORS, MARKERS, _figure, _save, _wrap

        groups = {c: [r for r in rows if r["error"] is None] for c, rows in self._by_candidate().items()}
        groups = {c: rows for c, rows in groups.items() if rows}
        order = sorted(groups, key=lambda c: min(_rank(r) for r in groups[c]))
        shown = order[:top]
        fig = _figure(12, 4.8)
        ax1, ax2 = fig.subplots(1, 2)
        for c in [c for c in order if c not in shown] + shown:  # the grey ones underneath, the legend best-first
            rows = sorted(groups[c], key=lambda r: r["T"])
            ts, scores = [r["T"] for r in rows], [100 * r["score"] for r in rows]
            if c in shown:
                color = COLORS[shown.index(c) % len(COLORS)]
                ax1.plot(ts, scores, color=color, marker="o", linewidth=1.5, label=f"{c + 1}: {rows[0]['label']}")
            else:
                ax1.plot(ts, scores, color="0.75", linewidth=0.8, zorder=0)
            for r in rows:
                marker = MARKERS[self.timesteps.index(r["T"]) % len(MARKERS)]
                ax2.scatter([max(r["conversion_seconds"], 1e-3)], [100 * r["score"]], marker=marker, s=30,
                            color=COLORS[shown.index(c) % len(COLORS)] if c in shown else "0.75")
        for t in self.timesteps:
            ax2.scatter([], [], marker=MARKERS[self.timesteps.index(t) % len(MARKERS)], color="0.3", label=f"T = {t}")
        if self.ann_score is not None:
            ax1.axhline(100 * self.ann_score, color="black", linestyle="--", linewidth=1.0,
                        label=f"ANN ({100 * self.ann_score:.1f} %)")
        if len(self.timesteps) > 1 and self.timesteps[-1] / self.timesteps[0] >= 8:
            ax1.set_xscale("log", base=2)
        ax1.set_xticks(self.timesteps, [str(t) for t in self.timesteps])
        ax1.minorticks_off()
        what = f"{self.score} (%) on held-out calibration data"
        ax1.set_xlabel("counted time steps T")
        ax1.set_ylabel(what)
        ax1.set_title(_wrap(f"{self.score} vs T, {len(groups)} candidate recipes ({self.backend} backend)", 60),
                      fontsize=10)
        ax1.legend(fontsize=7, loc="best")
        ax1.grid(True, alpha=0.3)
        ax2.set_xscale("log")
        ax2.xaxis.set_minor_formatter(NullFormatter())  # the decade labels only: minor ones overlap
        ax2.set_xlabel("conversion time (s, log scale)")
        ax2.set_ylabel(what)
        ax2.set_title("score vs conversion time (one point per candidate and T)", fontsize=10)
        ax2.legend(fontsize=7, loc="lower right")
        ax2.grid(True, alpha=0.3)
        return _save(fig, path)


# -- tune --------------------------------------------------------------------------------------------


def tune(ann: nn.Module, calibration: Any, timesteps: int | Sequence[int] = (4, 8), *, candidates: Any = None,
         include: Any = None, holdout_batches: int = 1, score: str = "auto", budget_s: float | None = None,
         backend: str = "torch", backend_options: dict | None = None, seed: int = 0, progress: bool = True,
         max_stack: int = 3, convert_per_t: bool | None = None, disable: Iterable[str] = (),
         calibration_batch_size: int | None = None) -> TuneResult:
    """Try candidate recipes on ``ann`` and return the best one per T, scored on held-out calibration batches.

    Args:
        ann: the trained ANN (never modified).
        calibration: the calibration data, as :func:`snnbridge.convert` takes it (a DataLoader or
            list of batches, tensors or ``(x, y)`` pairs; or samples: a tensor, an ``(x, y)`` pair
            of tensors, a Dataset, read in batches of ``calibration_batch_size``). It is read once,
            in order; the last ``holdout_batches`` batches only score, the others calibrate.
        timesteps: the T values to find a recipe for.
        candidates: the recipes to try, in this order (default: built from the installed
            plugins, cheap-first; see the module docstring). A recipe the rules refuse is an error.
        include: recipes tried before the candidates (e.g. the one you use now), checked the same way.
        holdout_batches: calibration batches kept for scoring (never given to ``convert``).
        score: ``"accuracy"`` (needs labelled batches), ``"agreement"`` (same class as the ANN) or
            ``"auto"``: accuracy when every held-out batch has labels, else agreement.
        budget_s: seconds after which no new candidate starts (one running is finished; the
            first always runs). None: try all.
        backend, backend_options, seed, calibration_batch_size: passed to every ``convert``.
        progress: a progress bar over the candidates.
        max_stack: most plugins in an automatic candidate.
        convert_per_t: True: convert every candidate once per T; False: only the T-specific ones
            (the others once, for the largest T, scored at every T from one sweep); None: as False
            where converting for the smallest T gives the same SNN bit for bit, else per T (a plugin
            may adapt to the conversion's T without being T-specific).
        disable: plugin names left out of the registry.

    Returns:
        a :class:`TuneResult`; ``result.best[T]`` is plain data for ``snnbridge.convert``.
    """
    started = time.perf_counter()
    steps = _timesteps(timesteps)
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}.")
    for name, value, low in (("holdout_batches", holdout_batches, 1), ("max_stack", max_stack, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be a whole number >= {low}, got {value!r}.")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                 or not budget_s > 0):
        raise InputError(f"budget_s must be a positive number of seconds (or None for no limit), got {budget_s!r}.")
    if not isinstance(ann, nn.Module):
        raise InputError(f"snnbridge.tune takes a torch.nn.Module, got {type(ann).__name__}.")
    if distributed.active():
        raise InputError("snnbridge.tune runs in one process; call it outside torch.distributed (or on rank 0 only, "
                         "without a process group), then convert with the chosen recipe on every rank.")

    objects: list[Any] = []
    given = _given(candidates, objects, "candidate")
    extra = _given(include, objects, "included recipe")
    if candidates is not None and not given and not extra:
        raise InputError("candidates is empty; give at least one recipe, or candidates=None for the automatic ones.")
    registry = get_registry(objects, disabled=disable)
    make_neuron_factory(backend, backend_options, registry)  # an unknown or unusable backend: before any work
    recipes = _build_given(extra, registry, "included recipe")
    rejected: list[dict[str, Any]] = []
    if candidates is None:
        auto, rejected = candidate_recipes(ann, registry=registry, max_stack=max_stack)
        recipes += auto
    else:
        recipes += _build_given(given, registry, "candidate")
    unique: dict[str, Recipe] = {}
    for r in recipes:
        unique.setdefault(_key(r), r)
    recipes = list(unique.values())

    batches = _split_batches(calibration, DEFAULT_BATCH_SIZE if calibration_batch_size is None
                             else calibration_batch_size)
    if not batches:
        raise InputError("the calibration data yielded no batches; pass a non-empty DataLoader or list of batches.")
    if holdout_batches >= len(batches):
        raise InputError(f"holdout_batches = {holdout_batches}, but the calibration data has {len(batches)} "
                         f"batch(es): at least one must remain to calibrate. Give more batches (or smaller ones, "
                         f"calibration_batch_size) or a smaller holdout_batches (at most {len(batches) - 1}).")
    fit = [x for x, _ in batches[:-holdout_batches]]
    device = _device(ann)
    held = [(x.to(device), y) for x, y in batches[-holdout_batches:]]
    for x, _ in held:
        if not torch.is_floating_point(x) or tuple(x.shape[1:]) != tuple(fit[0].shape[1:]):
            raise CalibrationError(f"held-out calibration batch shaped {list(x.shape)} ({x.dtype}) does not match "
                                   f"the calibration batches ({list(fit[0].shape)}, {fit[0].dtype}); every batch "
                                   "needs floating-point inputs of the same sample shape.")
    labelled = all(y is not None for _, y in held)
    if score == "accuracy" and not labelled:
        raise InputError("score='accuracy' needs labels, but the held-out calibration batches have none; give "
                         "(x, y) batches, or use score='agreement' (same class as the ANN).")
    kind = "accuracy" if score == "accuracy" or (score == "auto" and labelled) else "agreement"
    reference = copy.deepcopy(ann).eval()
    with torch.no_grad():
        targets = [reference(x) for x, _ in held]
    if any(t.dim() != 2 for t in targets):
        raise InputError(f"tune compares class predictions, but the ANN's output is shaped {list(targets[0].shape)}; "
                         "it needs [batch, classes] scores.")
    ann_score = None
    if kind == "accuracy":
        right = sum(int((t.argmax(-1).cpu() == y.cpu()).sum()) for t, (_, y) in zip(targets, held) if y is not None)
        ann_score = right / sum(x.shape[0] for x, _ in held)

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    label_of = _labeller()
    bar = progress_bar(desc="tune", enabled=progress, total=len(recipes), unit="recipe")
    try:
        for index, recipe in enumerate(recipes):
            elapsed = time.perf_counter() - started
            plain = recipe.to_list()
            if index and budget_s is not None and elapsed >= budget_s:
                skipped.append({"candidate": index, "recipe": plain, "label": label_of(plain)})
                bar.update(1)
                continue
            made: dict[int, tuple[Any, SnnbridgeError | None, float]] = {}

            def made_at(t: int, recipe=recipe, made=made):
                if t not in made:
                    made[t] = _convert_once(ann, recipe, fit, t, backend, backend_options, seed)
                return made[t]

            for conv_t, scored in _plan(recipe, steps, convert_per_t, made_at):
                snn, exc, seconds = made_at(conv_t)
                base = {"candidate": index, "recipe": plain, "label": label_of(plain), "converted_for": conv_t,
                        "started_s": round(elapsed, 3), "conversion_seconds": seconds}
                if exc is None:
                    try:
                        measured = _measure(snn, held, targets, scored)
                    except _FATAL:
                        raise
                    except SnnbridgeError as failure:  # e.g. a pre-simulation longer than T
                        exc = failure
                if exc is not None:
                    rows += [{**base, "T": t, "score": None, "agreement": None, "accuracy": None, "mse": None,
                              "steps_run": None, "error": f"{type(exc).__name__}: {exc}"} for t in scored]
                    continue
                rows += [{**base, "T": t, "score": measured[t][kind], **measured[t],
                          "steps_run": int(snn.steps_for(t)), "error": None} for t in scored]
            bar.update(1)
    finally:
        bar.close()
    best: dict[int, list] = {}
    for t in steps:
        ok = [r for r in rows if r["T"] == t and r["error"] is None]
        if ok:
            best[t] = min(ok, key=_rank)["recipe"]
    if not best:
        first = next((r for r in rows if r["error"]), None)
        raise InputError("no candidate recipe converted" + (f"; the first error ({first['label']}): {first['error']}"
                                                            if first else "") + ". Fix that problem, or give "
                         "candidates that suit this network.")
    return TuneResult(best=best, rows=rows, timesteps=steps, score=kind, backend=backend, seed=seed,
                      holdout={"batches": holdout_batches, "samples": sum(x.shape[0] for x, _ in held),
                               "fit_batches": len(fit)},
                      ann_score=ann_score, candidates=len(recipes), skipped=skipped, rejected=rejected,
                      budget_s=budget_s, seconds=round(time.perf_counter() - started, 3),
                      backend_options=dict(backend_options or {}))


def _convert_once(ann, recipe: Recipe, fit: list, timesteps: int, backend: str, backend_options, seed: int):
    """``(snn, None, seconds)``, or ``(None, error, seconds)`` when the recipe fails on this network or T."""
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):  # the same random state for every candidate; the caller's kept
            torch.manual_seed(seed)
            snn = convert(ann, recipe, calibration=fit, backend=backend, timesteps=timesteps,
                          backend_options=backend_options, progress=False, seed=seed)
        return snn, None, round(time.perf_counter() - t0, 3)
    except _FATAL:
        raise
    except SnnbridgeError as exc:
        return None, exc, round(time.perf_counter() - t0, 3)


def _plan(recipe: Recipe, steps: list[int], convert_per_t: bool | None, made_at) -> list[tuple[int, list[int]]]:
    """Which conversion serves which T: ``[(conversion T, [scored T ...]), ...]``.

    T-specific recipes (and all with ``convert_per_t=True``) are converted for every T. The
    others are converted for the largest T and scored at every T from its sweep, when that is
    the SNN ``convert`` gives for any T: with ``convert_per_t=None`` this is checked by
    converting for the smallest T too and comparing the two SNNs bit for bit (a plugin may
    adapt to the conversion's T without being T-specific, e.g. a per-step shift theta/(2T)).
    """
    if len(steps) == 1 or convert_per_t or any(e.info.t_specific for e in recipe.entries):
        return [(t, [t]) for t in steps]
    if convert_per_t is False:
        return [(steps[-1], steps)]
    (top, top_exc, _), (low, low_exc, _) = made_at(steps[-1]), made_at(steps[0])
    if top_exc is None and low_exc is None and model_checksum(top) == model_checksum(low):
        return [(steps[-1], steps)]
    return [(t, [t]) for t in steps]


def _labeller():
    """``recipe -> short label`` with the installed plugins' defaults looked up once."""
    from .plots import plugin_defaults, recipe_label

    cache: dict[str, dict[str, Any]] = {}

    def label(recipe: list) -> str:
        names = [n for entry in recipe for n in entry]
        missing = [n for n in names if n not in cache]
        cache.update(plugin_defaults(missing))
        return recipe_label(recipe, cache)

    return label
