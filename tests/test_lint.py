"""The code stays as the project's own rules say: ruff clean, and the public surfaces
(server/, harness/, tui/) type-check under mypy with the settings in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_is_clean() -> None:
    result = _run([str(BIN / "ruff"), "check", "--no-cache", "."])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_is_clean_on_the_packages() -> None:
    result = _run([sys.executable, "-m", "mypy", "server", "harness", "tui"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("package", ["server", "tui"])
def test_public_surface_is_re_exported_explicitly(package: str) -> None:
    """``from .x import Y as Y`` for every public name, as trio does, and __all__ lists them."""
    import ast
    import importlib

    tree = ast.parse((REPO / package / "__init__.py").read_text())
    # Re-exports may sit under ``if TYPE_CHECKING:`` when the package imports them on first
    # use (a module __getattr__): walk the whole module, not only its top level.
    imported = [alias for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.level > 0 for alias in node.names]
    assert imported, f"{package}/__init__.py re-exports nothing"
    assert [a.name for a in imported if a.asname != a.name] == []
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(a.name for a in imported)
    for name in module.__all__:  # each one really resolves, lazily or not
        assert getattr(module, name) is not None, name
