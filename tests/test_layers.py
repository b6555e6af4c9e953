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
