"""Docs that run: every Python block of the README and docs/*.md executes; generated references are current.

A block whose info string says ``python notest`` is shown but not run (none should need it
except pure fragments). The blocks of one file run in order in one namespace that starts with
small stand-ins for what the prose calls ``ann``/``model``, ``train_loader``/``loader`` and
``images``/``labels``, so the snippets run as written.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snnbridge
from helpers import zoo
from snnbridge import catalog

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("examples/*/README.md"))]
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, code) of every runnable Python block of a Markdown file."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(2)) for m in BLOCK.finditer(text)
            if "notest" not in m.group(1)]


def _namespace() -> dict:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = zoo.randomize_bn(zoo.TinyConvNet()).eval()
    x, y = torch.rand(48, 3, 16, 16, generator=g), torch.randint(0, 3, (48,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return {"torch": torch, "snnbridge": snnbridge, "ann": model, "model": model, "train_loader": loader,
            "loader": loader, "images": x[:8], "labels": y[:8], "__name__": "__docs__"}


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda d: str(d.relative_to(ROOT)))
def test_python_blocks_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _namespace()
    for line, code in python_blocks(doc):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(code, f"{doc.name}:{line}", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"{doc.relative_to(ROOT)}, the block at line {line} fails: {type(exc).__name__}: {exc}")


def test_api_reference_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_api_reference_documents_every_member():
    text = (ROOT / "docs" / "api.md").read_text()
    undocumented = [line for line in text.splitlines() if re.search(r"(`|\(property\)):\s*$", line)]
    assert not undocumented, undocumented


def test_readme_method_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- method-table:start -->", "<!-- method-table:end -->"
    assert start in readme and end in readme, "the README must hold the generated method table between markers"
    table = readme.split(start)[1].split(end)[0].strip()
    assert table == catalog.markdown(catalog.method_rows()), \
        "README method table is stale: paste the output of `snnbridge plugins --markdown`"


def test_method_table_facts():
    rows = {r["plugin"]: r for r in catalog.method_rows()}
    assert rows["ftbc"]["t_specific"] and rows["snn_calibration"]["t_specific"] and not rows["maxnorm"]["t_specific"]
    assert {"cos", "srp"} <= set(rows["qcfs"]["stacks_with"]) and "cos" not in rows["maxnorm"]["stacks_with"]
    assert "robustnorm" not in rows["maxnorm"]["stacks_with"]  # two threshold sources never stack
    assert "Bu et al." in rows["qcfs"]["reference"] and "threshold" in rows["maxnorm"]["stages"]

