"""Who may import what (DESIGN: core / plugins / adapters), checked on the source files.

* plugins (built-in, examples, third-party demos) and adapters use only names exported by
  ``snnbridge`` (``snnbridge.__all__``) - a third-party author can do everything they do;
* the core and the method plugins import no SNN framework; adapters import no plugin;
* the activation-site naming scheme stays inside ``snnbridge/graph.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import snnbridge

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"spikingjelly", "snntorch"}
PLUGIN_FILES = sorted((REPO / "plugins").glob("*.py")) + [REPO / "examples/plugin_correction/snnbridge_meanmatch.py",
                                                         REPO / "tests/thirdparty_plugin/snnbridge_halfshift_demo.py"]
ADAPTER_FILES = sorted((REPO / "adapters").glob("*.py"))
CORE_FILES = sorted((REPO / "snnbridge").glob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file (relative imports resolved inside the package)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = ("." * node.level) + (node.module or "")
            out.append((module, [a.name for a in node.names]))
    return out


def _ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


@pytest.mark.parametrize("path", PLUGIN_FILES + ADAPTER_FILES, ids=_ids(PLUGIN_FILES + ADAPTER_FILES))
def test_plugins_and_adapters_use_public_names_only(path):
    for module, names in _imports(path):
        top = module.split(".")[0]
        if top == "snnbridge":
            assert module == "snnbridge", f"{path.name} imports {module}: use the names snnbridge exports"
            assert set(names) <= set(snnbridge.__all__), set(names) - set(snnbridge.__all__)
        assert not (module.startswith(".") and path.parent.name == "adapters"), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", PLUGIN_FILES + CORE_FILES, ids=_ids(PLUGIN_FILES + CORE_FILES))
def test_core_and_methods_import_no_snn_framework(path):
    for module, _ in _imports(path):
        assert module.split(".")[0] not in FRAMEWORKS, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=_ids(ADAPTER_FILES))
def test_adapters_import_no_plugin(path):
    for module, _ in _imports(path):
        assert "plugins" not in module.split("."), f"{path.name} imports {module}"


def test_site_prefix_lives_in_graph_only():
    offenders = [p.name for p in CORE_FILES + PLUGIN_FILES + ADAPTER_FILES
                 if "snnsite_" in p.read_text() and p.name != "graph.py"]
    assert not offenders


def test_every_public_name_is_importable_and_documented():
    for name in snnbridge.__all__:
        obj = getattr(snnbridge, name)
        if callable(obj) and not name.startswith("_"):
            assert (obj.__doc__ or "").strip(), f"snnbridge.{name} has no docstring"
