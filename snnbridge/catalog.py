"""The method table: every installed method and training plugin with its paper, stages, options and what it stacks with.

Computed from the registry, never written by hand: "stacks with" is the set of other methods
for which some recipe holding both passes validation (in either order, behind any threshold
source when neither supplies one); for a training plugin, the other training plugins one
training recipe can hold with it (:func:`snnbridge.training_loss`; option values aside).
``snnbridge plugins --markdown`` prints it; the README's table is this output (a test keeps
them equal).
"""

from __future__ import annotations

import itertools
from typing import Any

from .errors import SnnbridgeError
from .plugin_manager import Registry, get_registry


def _builds(recipe: list[str], registry: Registry) -> bool:
    from .recipe import build_recipe

    try:
        build_recipe(recipe, registry=registry)
    except SnnbridgeError:
        return False
    return True


def _builds_training(names: list[str], registry: Registry) -> bool:
    from .recipe import RecipeEntry
    from .training import check_training_entries

    try:
        check_training_entries([RecipeEntry(n, {}, registry.info(n)) for n in names], registry)
    except SnnbridgeError:
        return False
    return True


def stacks_with(name: str, registry: Registry | None = None) -> list[str]:
    """The other method plugins some valid recipe combines with ``name`` (for a training plugin: training ones)."""
    registry = registry or get_registry()
    if registry.info(name).kind == "training":
        return [o for o in registry.names("training") if o != name and _builds_training([name, o], registry)]
    methods = registry.names("method")
    sources = [m for m in methods if "threshold" in registry.info(m).provides]
    out = []
    for other in methods:
        if other == name:
            continue
        pair = [name, other]
        candidates = [list(p) for p in itertools.permutations(pair)]
        candidates += [[s, *p] for s in sources if s not in pair for p in itertools.permutations(pair)]
        if any(_builds(c, registry) for c in candidates):
            out.append(other)
    return out


def method_rows(registry: Registry | None = None) -> list[dict[str, Any]]:
    """One row per installed method and training plugin (plain data, for JSON and the Markdown table)."""
    registry = registry or get_registry()
    rows = []
    for record in registry.records():
        if record["kind"] not in ("method", "training") or record["broken"]:
            continue
        name = record["name"]
        rows.append({
            "plugin": name, "reference": record["reference"], "summary": record["summary"],
            "stages": record["stages"], "options": [o["name"] for o in record["options"]
                                                    if o["name"] not in ("timesteps", "on_mismatch")],
            "stacks_with": stacks_with(name, registry), "t_specific": bool(record["t_specific"]),
            "needs_data": record["needs_data"],
        })
    return rows


def _paper(reference: str) -> str:
    """The reference up to the official-code part (the table stays readable)."""
    for cut in ("; official code", "; code:", " (official code"):
        if cut in reference:
            return reference.split(cut)[0]
    return reference


def markdown(rows: list[dict[str, Any]]) -> str:
    """The method table in Markdown."""
    lines = ["| plugin | paper | stages | options | stacks with | T-specific |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"`{r['plugin']}`", _paper(r["reference"]) or r["summary"], ", ".join(r["stages"]),
                 ", ".join(f"`{o}`" for o in r["options"]) or "-", ", ".join(r["stacks_with"]) or "-",
                 "yes" if r["t_specific"] else "no"]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
