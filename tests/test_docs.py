"""The documentation stays true to the code: the CLI reference is what the parser says, the benchmark
tables are what the results say, the README stays short, and the MkDocs site builds without warnings."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_parser() -> None:
    gen = _load(ROOT / "docs" / "gen_cli_reference.py")
    committed = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert gen.build() == committed, "docs/reference/cli.md is out of date: run python docs/gen_cli_reference.py"


def test_cli_reference_lists_every_subcommand_and_option() -> None:
    from rnntext.cli import build_parser

    text = (ROOT / "docs" / "reference" / "cli.md").read_text()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        assert f"## `rnntext {name}`" in text
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"rnntext {name} {option} missing from docs/reference/cli.md"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move detail into docs/"
    top = "\n".join(lines[:10])
    assert "make test" in top  # CI runs the README's test command
    assert ".venv/bin/rnntext train --dataset ag_news --data-dir ../shared/data/ag_news_20k --out runs/ag_news" in top


def test_benchmark_tables_are_rendered_from_the_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    render = _load(ROOT / "benchmarks" / "render_markdown.py")
    stale = [str(path.relative_to(ROOT)) for path, content in render.planned().items()
             if not path.is_file() or path.read_bytes() != content]
    assert not stale, f"out of date: {stale}; run python3 benchmarks/render_markdown.py"


def test_mkdocs_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    proc = subprocess.run([*cmd, "build", "--strict", "--quiet", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
