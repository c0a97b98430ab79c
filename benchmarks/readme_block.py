"""Copy a suite run's tables into the README, between the benchmark-table markers.

Each network's section of the suite's markdown (its table, its met / NOT met lines and a link to
its PNG), with an intro and an optional outro paragraph read from files::

    python benchmarks/readme_block.py benchmarks/results/<date>-<machine>.md intro.md [outro.md]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->"


def block(md_path: Path, intro: str, outro: str = "") -> str:
    md = (md_path if md_path.is_absolute() else ROOT / md_path).read_text()
    stem = md_path.with_suffix("").as_posix()
    parts = []
    for m in re.finditer(r"^## (\S+)\n", md, re.M):
        name = m.group(1)
        sec = md[m.start():]
        nxt = sec.find("\n## ", 5)
        sec = sec if nxt < 0 else sec[:nxt]
        head = sec.splitlines()[2]
        table = sec[sec.index("| method |"):]
        table = table[:table.index("\n\n")]
        lines = [ln for ln in sec.splitlines() if ln.startswith(("- met", "- NOT"))]
        parts.append(f"**{name}** - {head}\n\n{table}\n\n" + "\n".join(lines) +
                     f"\n\n![accuracy vs T, {name}]({stem}-{name}.png)")
    return f"{START}\n{intro.strip()}\n\n" + "\n\n".join(parts) + (f"\n\n{outro.strip()}" if outro else "") + f"\n{END}"


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    md = Path(argv[0]).resolve()
    rel = md.relative_to(ROOT) if md.is_relative_to(ROOT) else md  # the PNG links are relative to the README
    new = block(rel, Path(argv[1]).read_text(), Path(argv[2]).read_text() if len(argv) == 3 else "")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: README.md has no {START} ... {END} markers")
    a, b = text.index(START), text.index(END) + len(END)
    readme.write_text(text[:a] + new + text[b:])


if __name__ == "__main__":
    main(sys.argv[1:])
