"""The run's event stream: what the TUI (and anyone tailing the run folder) watches.

``events.jsonl`` in the run folder, one JSON object per line, always with ``t`` (seconds since
the run started) and ``type``:

- ``run``: the run started: ``name``, ``experiment`` (its dict), ``run_dir``, ``target``.
- ``phase``: ``phase`` entered (steady, faults, heal, settle, drain, check).
- ``status``: every second: ``nodes`` (name -> state, pid, rss_bytes, connections, redis),
  ``links`` (name -> {"toxics": [fault kinds]}), ``fleet`` (clients, connected, subscribed,
  delivered, reconnects, stalled, storm_open, latency_p50_ms/latency_p99_ms of the last
  second, live_duplicates and live_reorders seen so far: provisional, the checker decides),
  ``publisher`` (ok, failed, indeterminate), ``faults`` (the active ones).
- ``fault_start`` (injection begins), ``fault`` (injected; ``resolved`` names the real
  targets, ``hold_s``), ``heal``: ``fault_id``, ``kind``, ``target``, ``params``, ``source``
  (schedule|interactive); ``fault_error`` when an injection or a heal failed;
  ``fault_skipped`` (with ``reason``) when the cluster's server lacks a feature the fault
  needs (harness.servers), so it was not run.
- ``log``: ``level``, ``message``.
- ``verdict``: the final ``report`` (report.json's content) and ``exit_code``.

Commands flow the other way through ``control.sock`` (see harness.control).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["EventLog"]


class EventLog:
    """Append-only JSONL writer (flushed per event: a tailing TUI must see it at once)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self.t0 = clock()
        self._file = open(path, "ab", buffering=0)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"t": round(self._clock() - self.t0, 3), "type": type, **fields}
        if not self._file.closed:
            self._file.write(orjson.dumps(event, default=str) + b"\n")
        for listener in self.listeners:
            listener(event)
        return event

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def close(self) -> None:
        self._file.close()
