"""TUI tests run on asyncio (Textual), the server and harness tests on trio.

tests/server and tests/harness enable pytest-trio's trio mode in their own conftest. Its
collection hook is session-wide: it marks *every* coroutine test of the session ``trio``,
ours included. The hook below (run last) takes that mark off the tests of this directory, so
they run under pytest-asyncio (``pytestmark = pytest.mark.asyncio`` in each async module:
strict mode, nothing global). Async fixtures are avoided here: trio mode's fixture hook would
claim them in the directories where it applies, and we need none.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
HERE = Path(__file__).parent.resolve()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A copy of the recorded run folders (tests may add to it)."""
    target = tmp_path / "runs"
    shutil.copytree(FIXTURES / "recorded-runs", target)
    return target
