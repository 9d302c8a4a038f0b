"""``python -m bench.config_startup``: what the declarative config costs a process at start.

Every measurement is a fresh interpreter (imports are cached per process, so this is the only
honest way to time them), repeated ``--rounds`` times; the table shows the median and the
minimum in milliseconds and the ratio of the median to the stdlib-only config it replaced.

- ``python -c pass``: the interpreter alone.
- stdlib config: the hand-written ``server/config.py`` (argparse, tomllib, dataclasses) taken
  from git history (the newest version without pydantic), imported standalone and loaded.
- pydantic config: this tree's ``server/config.py`` and ``server/schema.py``, imported
  standalone (without the rest of the server) and loaded.
- the libraries alone (pydantic, pydantic-settings; attrs + cattrs if installed, for the
  comparison in docs/benchmarks.md).
- the whole start of a node before it binds: ``import server.node`` plus ``load_config``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOAD = "load_config(['--dev', '--port', '7000'], {'TURNOUT_HISTORY_SIZE': '10'})"


def _old_config(rev: str | None) -> str:
    """The newest committed server/config.py without pydantic (or the one at ``rev``)."""
    def show(commit: str) -> str:
        return subprocess.run(["git", "show", f"{commit}:server/config.py"], cwd=REPO,
                              check=True, capture_output=True, text=True).stdout
    if rev is not None:
        return show(rev)
    commits = subprocess.run(["git", "log", "--format=%H", "--", "server/config.py"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout.split()
    for commit in commits:
        text = show(commit)
        if "pydantic" not in text:
            return text
    raise SystemExit("no stdlib-only server/config.py in this repository's history")


def _time(code: str, cwd: Path, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _installed(module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.config_startup",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interpreters per row")
    parser.add_argument("--baseline-rev", help="git revision of the stdlib config to compare")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "old_config.py").write_text(_old_config(args.baseline_rev))
        package = work / "new_config"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name in ("config.py", "schema.py"):
            shutil.copy(REPO / "server" / name, package / name)
        rows = [
            ("python -c pass", "pass", work),
            ("stdlib config (argparse, dataclasses): import + load",
             f"from old_config import load_config; {LOAD}", work),
            ("pydantic config (pydantic-settings): import + load",
             f"from new_config.config import load_config; {LOAD}", work),
            ("import pydantic", "import pydantic", work),
            ("import pydantic_settings", "import pydantic_settings", work),
        ]
        if _installed("cattrs"):
            rows.append(("import attrs, cattrs", "import attrs, cattrs", work))
        rows.append(("node start: import server.node + load_config",
                     f"import server.node; from server.config import load_config; {LOAD}", REPO))
        results = [(label, _time(code, cwd, args.rounds)) for label, code, cwd in rows]
    base = statistics.median(results[1][1])
    print(f"config start-up, {args.rounds} fresh interpreters per row (ms)")
    print(f"{'':58} {'median':>8} {'min':>8} {'vs stdlib':>10}")
    for label, times in results:
        median = statistics.median(times)
        print(f"{label:58} {median:8.1f} {min(times):8.1f} {median / base:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
