"""Helpers to run ``turnout run`` as a real subprocess and read its run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def turnout_run(*args: str, timeout: float = 900, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env["PATH"] = f"{REPO / '.tools' / 'bin'}:{full_env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "harness", "run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def explain(result: subprocess.CompletedProcess[str], run_dir: Path) -> str:
    text = f"exit {result.returncode}\n--- stderr ---\n{result.stderr[-6000:]}"
    md = run_dir / "report.md"
    if md.exists():
        text += "\n--- report.md ---\n" + md.read_text()[-4000:]
    return text
