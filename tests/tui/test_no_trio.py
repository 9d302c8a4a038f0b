"""tui/ is asyncio only: it must never import trio, directly or through harness modules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TUI = Path(__file__).resolve().parents[2] / "tui"


def test_importing_the_tui_does_not_import_trio() -> None:
    code = ("import sys\n"
            "import tui.app, tui.commands, tui.control_client, tui.feed, tui.launcher\n"
            "import tui.screens.browser, tui.screens.live, tui.screens.fault_dialog\n"
            "assert 'trio' not in sys.modules, sorted(m for m in sys.modules if 'trio' in m)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=TUI.parent, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_no_module_of_tui_names_trio() -> None:
    pattern = re.compile(r"^\s*(import\s+trio|from\s+trio[\s.])", re.MULTILINE)
    offenders = [str(p.relative_to(TUI)) for p in TUI.rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []
