"""Rewrite the benchmark tables from the results already measured, without running anything.

Every benchmark script has a `markdown(results) -> str` that it runs when it writes
benchmarks/results/NAME.json, to write NAME.md beside it. This script runs those same functions on
every benchmarks/results/*.json (the script is the JSON's "benchmark" field, else its name), writes
each NAME.md, and copies the tables into docs/benchmarks.md between the marker comments

    <!-- begin benchmarks/results/NAME.md -->
    <!-- end benchmarks/results/NAME.md -->

(and benchmarks/results/*.png into docs/img/). Run it after changing a table's layout, or after
copying in a JSON measured elsewhere:

    python3 benchmarks/render_markdown.py            # rewrite what differs
    python3 benchmarks/render_markdown.py --check    # exit 1 if anything would change
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, markdown_document  # noqa: E402

DOCS = HERE.parent / "docs"
DOCS_PAGE = DOCS / "benchmarks.md"
DOCS_IMAGES = DOCS / "img"
BLOCK = re.compile(r"(<!-- begin benchmarks/results/(?P<name>[\w.-]+)\.md -->\n)(?P<body>.*?)"
                   r"(<!-- end benchmarks/results/(?P=name)\.md -->)", re.S)


def script_for(name: str, payload: dict) -> str:
    """The benchmark script (a module name in benchmarks/) that wrote NAME.json."""
    script = payload.get("benchmark") or name
    if not (HERE / f"{script}.py").is_file():
        raise SystemExit(f"{name}.json: no benchmarks/{script}.py to render it (set its \"benchmark\" field)")
    return script


def render_results(results: Path = RESULTS) -> dict[str, str]:
    """NAME -> the text of NAME.md, for every NAME.json in `results`."""
    out = {}
    for path in sorted(results.glob("*.json")):
        payload = json.loads(path.read_text())
        script = script_for(path.stem, payload)
        module = importlib.import_module(script)
        out[path.stem] = markdown_document(path.stem, f"{script}.py", module.markdown(payload))
    return out


def render_docs_page(page: str, tables: dict[str, str]) -> str:
    """The docs page with every marked block replaced by its table (the generated comment left out)."""

    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in tables:
            raise SystemExit(f"{DOCS_PAGE}: no benchmarks/results/{name}.json for the block {name!r}")
        body = tables[name].split("-->\n", 1)[1].strip()
        return f"{m.group(1)}\n{body}\n\n{m.group(4)}"

    return BLOCK.sub(fill, page)


def planned(results: Path = RESULTS) -> dict[Path, bytes]:
    """Every file this script writes, with its content."""
    tables = render_results(results)
    files: dict[Path, bytes] = {results / f"{name}.md": text.encode() for name, text in tables.items()}
    if DOCS_PAGE.is_file():
        files[DOCS_PAGE] = render_docs_page(DOCS_PAGE.read_text(), tables).encode()
    for png in sorted(results.glob("*.png")):
        files[DOCS_IMAGES / png.name] = png.read_bytes()
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = ap.parse_args(argv)
    stale = []
    for path, content in planned().items():
        if path.is_file() and path.read_bytes() == content:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(HERE.parent)}")
    if args.check and stale:
        print("run: python3 benchmarks/render_markdown.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
