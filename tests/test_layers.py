"""The package's layers import downward only (the import-linter contracts in .importlinter), and
`import rnntext` and the command line's parser and help load no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_layer_contracts_hold() -> None:
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("code", [
    "import rnntext",
    "import rnntext.cli as c; c.build_parser()",
    "import rnntext.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass",
    "import rnntext.cli as c\ntry:\n    c.main(['train', '--help'])\nexcept SystemExit:\n    pass",
])
def test_no_torch_for_import_and_help(code: str) -> None:
    check = f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\nprint('light')"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.rstrip().endswith("light"), out.stderr[-2000:]


def test_public_api_resolves_lazily() -> None:
    import rnntext

    for name in rnntext.__all__:
        assert getattr(rnntext, name) is not None
    with pytest.raises(AttributeError):
        rnntext.no_such_thing  # noqa: B018


def test_no_module_imports_another_that_imports_it_back() -> None:
    """No cycles between modules either, counting imports inside functions and under TYPE_CHECKING (a
    function-level import that dodges a cycle is still one)."""
    import ast

    src = ROOT / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (src / "rnntext").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        edges = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges.update(n for n in names if n in modules and n != mod and not mod.startswith(n + "."))
    cycles, state = [], {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, [*stack, v])
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
