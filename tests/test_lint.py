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
