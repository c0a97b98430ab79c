"""Write docs/api.md: every public name of snnbridge with its arguments and the first paragraph of its docstring.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 when docs/api.md is out of date (the tests run this)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "api.md"

GROUPS = [
    ("Converting and running", ["convert", "prepare", "simulate", "SpikingModel", "SpikingSite", "save", "load",
                                "record", "accuracy_curve", "ann_accuracy", "report", "layer_report", "energy",
                                "tune", "TuneResult", "plot_accuracy", "plot_layer_report", "fold_scales", "is_folded",
                                "export_nir",
                                "distributed",
                                "trace_for_conversion", "ConversionGraph"]),
    ("Training", ["training_loss", "TrainingLoss", "surrogate", "Surrogate", "firing_rule"]),
    ("Robustness", ["robustness", "evaluate_robustness", "fgsm", "pgd", "uniform_noise", "RobustnessReport"]),
    ("Recipes and plugins", ["build_recipe", "load_config", "parse_config", "Recipe", "RecipeEntry", "RunConfig",
                             "DataConfig", "get_registry", "hookimpl", "PluginInfo", "CAPABILITIES", "Option",
                             "PluginLoadWarning"]),
    ("What plugins work with", None),  # everything else that is not an error
    ("Errors", "errors"),
]


def _first_paragraph(obj) -> str:
    doc = inspect.cleandoc(obj.__doc__ or "")  # not inspect.getdoc: an inherited torch docstring says nothing here
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _annotation(a) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _signature(obj) -> str:
    """``(a: int, *, b: str = 'x') -> T`` with postponed annotations shown as written (no quotes)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        star = star or p.kind is p.VAR_POSITIONAL
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
    ret = f" -> {_annotation(sig.return_annotation)}" if sig.return_annotation is not sig.empty else ""
    return f"({', '.join(parts)}){ret}"


def _doc_of(cls, name: str, member) -> str:
    """The member's docstring, else that of the snnbridge base class it overrides (Observer.compute ...)."""
    fn = getattr(member, "fget", None) or getattr(member, "__func__", None) or member
    if fn.__doc__:
        return _first_paragraph(fn)
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("snnbridge") and name in vars(base):
            return _doc_of(base, name, vars(base)[name])
    return ""


def _members(cls) -> list[str]:
    lines = []
    for name, member in sorted(vars(cls).items()):
        if (name.startswith("_") and name != "__call__") or name == "extra_repr":
            continue
        doc = _doc_of(cls, name, member) if callable(member) or isinstance(
            member, (property, classmethod, staticmethod)) else None
        if isinstance(member, property):
            lines.append(f"  - `{name}` (property): {doc}")
        elif isinstance(member, (classmethod, staticmethod)):
            lines.append(f"  - `{name}{_signature(member.__func__)}`: {doc}")
        elif inspect.isfunction(member):
            lines.append(f"  - `{name}{_signature(member)}`: {doc}")
    return [line.rstrip() for line in lines]


def _entry(name: str, obj) -> list[str]:
    if inspect.isclass(obj):
        init = _signature(obj) if obj.__init__ is not object.__init__ else "()"
        lines = [f"### `{name}{init}`", "", _first_paragraph(obj), ""]
        if not issubclass(obj, BaseException):
            members = _members(obj)
            if members:
                lines += members + [""]
        return lines
    if callable(obj):
        return [f"### `{name}{_signature(obj)}`", "", _first_paragraph(obj), ""]
    if inspect.ismodule(obj):
        return [f"### `{name}` (module)", "", _first_paragraph(obj), ""]
    return [f"### `{name}`", "", f"{type(obj).__name__}: " + (_first_paragraph(obj) if isinstance(obj, type) else
                                                             "see the module docs"), ""]


def render() -> str:
    import snnbridge
    from snnbridge import errors

    public = [n for n in snnbridge.__all__ if n != "__version__"]
    error_names = [n for n in public if inspect.isclass(getattr(snnbridge, n))
                   and issubclass(getattr(snnbridge, n), BaseException)]
    placed: set[str] = set()
    out = ["# API reference", "",
           "Every name exported by `snnbridge` (`snnbridge.__all__`), with its arguments and the first paragraph",
           "of its docstring. Generated by `python docs/gen_api.py` from the code; a test keeps it current.",
           "The plugin hooks are documented in `snnbridge/hookspecs.py` (the plugin author's manual).", ""]
    for title, names in GROUPS:
        if names == "errors":
            names = error_names
        elif names is None:
            names = [n for n in public if n not in placed and n not in error_names]
        out += [f"## {title}", ""]
        for name in names:
            if name not in public:
                continue
            placed.add(name)
            obj = getattr(snnbridge, name)
            out += _entry(name, obj)
    missing = [n for n in public if n not in placed]
    assert not missing, missing
    del errors
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
