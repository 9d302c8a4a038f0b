"""Capacity searches (``turnout capacity FILE``) as the TUI browses them: plain reads of files.

A search writes one folder (``runs/<time>-<name>-capacity/`` by default) holding
``capacity.json`` (the target, the answer so far, every finished trial), ``capacity.md`` and
``trials/<viewers>/``, each an ordinary run folder (events.jsonl, report.json, logs/) that the
live screen replays or, while the trial runs, attaches to. harness/capacity.py writes them; this
module only reads, so a search in progress (capacity.json rewritten after every trial) is
read as it is now.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import RunEntry, read_run

__all__ = ["CapacityEntry", "TrialEntry", "list_capacity", "read_capacity"]


@dataclass(frozen=True)
class TrialEntry:
    """One trial: a viewer count of the file's pattern, run once."""

    viewers: int
    # holds / fails (finished, from capacity.json), running (its run folder is being
    # written), stopped (a folder without a verdict that capacity.json never recorded)
    result: str
    run_dir: Path
    p99_ms: Mapping[str, float | None] = field(default_factory=dict)
    lost: int | None = None
    reasons: tuple[str, ...] = ()
    elapsed_s: float | None = None
    cpu: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.result in ("holds", "fails")


@dataclass(frozen=True)
class CapacityEntry:
    path: Path
    file: str
    p99_ms: float | None
    max_viewers: int | None
    answer: int | None
    smallest_failing: int | None
    done: bool
    trials: tuple[TrialEntry, ...]
    resolution: int | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        stem = Path(self.file).stem if self.file else ""
        return stem or re.sub(r"^\d{8}-\d{6}-|-capacity$", "", self.name)

    @property
    def running(self) -> TrialEntry | None:
        return next((t for t in self.trials if t.result == "running"), None)

    @property
    def status(self) -> str:
        """One word for lists: searching (a trial runs), done, stopped (left unfinished:
        ``turnout capacity`` with the same --out resumes it) or error."""
        if self.error is not None:
            return "error"
        if self.running is not None:
            return "searching"
        return "done" if self.done else "stopped"


def _trial_from(raw: Mapping[str, Any], folder: Path) -> TrialEntry:
    viewers = int(raw.get("viewers") or 0)
    # The folder beside capacity.json first (the search may have moved since it ran).
    run_dir = folder / "trials" / str(viewers)
    if not run_dir.is_dir() and raw.get("run_dir"):
        run_dir = Path(str(raw["run_dir"]))
    p99 = raw.get("p99_ms") if isinstance(raw.get("p99_ms"), Mapping) else {}
    cpu = raw.get("cpu") if isinstance(raw.get("cpu"), Mapping) else {}
    lost = raw.get("lost")
    return TrialEntry(viewers=viewers, result="holds" if raw.get("holds") else "fails",
                      run_dir=run_dir, p99_ms=dict(p99 or {}),
                      lost=int(lost) if isinstance(lost, int | float) else None,
                      reasons=tuple(str(r) for r in raw.get("reasons") or ()),
                      elapsed_s=raw.get("elapsed_s"), cpu=dict(cpu or {}))


def _unrecorded_trials(folder: Path, recorded: set[int]) -> list[TrialEntry]:
    """Trial folders capacity.json does not list yet: the one running, or one cut short."""
    trials: list[TrialEntry] = []
    root = folder / "trials"
    if not root.is_dir():
        return trials
    for path in root.iterdir():
        if not path.is_dir() or not path.name.isdigit() or int(path.name) in recorded:
            continue
        run: RunEntry = read_run(path)
        result = "running" if run.in_progress else "stopped"
        if run.finished:  # finished after capacity.json was last written: not judged yet
            result = "holds" if run.verdict == "pass" else "fails"
        trials.append(TrialEntry(int(path.name), result, path))
    return trials


def read_capacity(folder: Path) -> CapacityEntry:
    """One capacity folder, as it is now (a search in progress included)."""
    try:
        doc = json.loads((folder / "capacity.json").read_text())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return CapacityEntry(folder, "", None, None, None, None, False,
                             tuple(_unrecorded_trials(folder, set())),
                             error=f"capacity.json: {exc}")
    trials = [_trial_from(raw, folder) for raw in doc.get("trials") or ()
              if isinstance(raw, Mapping)]
    trials += _unrecorded_trials(folder, {t.viewers for t in trials})
    trials.sort(key=lambda t: t.viewers)

    def number(key: str) -> int | None:
        value = doc.get(key)
        return int(value) if isinstance(value, int | float) else None

    p99 = doc.get("p99_ms")
    return CapacityEntry(folder, str(doc.get("file") or ""),
                         float(p99) if isinstance(p99, int | float) else None,
                         number("max_viewers"), number("answer"), number("smallest_failing"),
                         bool(doc.get("done")), tuple(trials), resolution=number("resolution"))


def list_capacity(runs_dir: Path) -> list[CapacityEntry]:
    """Every capacity folder of ``runs_dir`` (one holding capacity.json or trials/ of run
    folders), newest first."""
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and (
        (p / "capacity.json").exists() or (p / "trials").is_dir())]
    return [read_capacity(p) for p in sorted(folders, key=lambda p: p.name, reverse=True)]
