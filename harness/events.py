"""The run's event stream: what the TUI (and anyone tailing the run folder) watches.

``events.jsonl`` in the run folder, one JSON object per line, always with ``t`` and ``type``.
``t`` is the run's one time base: seconds since the run started (``EventLog.t0``, a
CLOCK_MONOTONIC reading). The harness records a ``run`` op at the same instant as the first op
of the history, so report.json's times (``injected_at``, ``healed_at``, ``phases``) count from
the same zero. Events:

- ``run``: the run started: ``name``, ``experiment`` (its dict), ``run_dir``, ``target``,
  ``seed``.
- ``phase``: ``phase`` entered (setup, steady, faults, heal, settle, drain, check), with
  ``duration_s`` (how long the phase lasts by the experiment, when it is a fixed time),
  ``waits_for`` (what the phase waits for, in words) and ``timeout_s`` (the most it waits).
- ``wait``: within a phase, the run waits for something before going on: ``waits_for``,
  ``timeout_s``, ``expected_s`` (when it should be over) and details (``faults``: each still
  running fault with ``due_in_s``).
- ``status``: every second: ``nodes`` (name -> state, pid, rss_bytes, connections, redis),
  ``links`` (name -> {"toxics": [fault kinds]}), ``fleet`` (clients, connected, subscribed,
  delivered, reconnects, stalled, storm_open, latency_p50_ms/latency_p99_ms of the last
  second, live_duplicates and live_reorders seen so far: provisional, the checker decides),
  ``publisher`` (ok, failed, indeterminate), ``faults`` (the active ones), ``cpu``
  (``cores`` of the machine, ``components``: CPU seconds per component since the run started,
  harness.cpu's ledger; the difference of two status events is the CPU split of that span).
- ``fault_start`` (injection begins), ``fault`` (injected; ``resolved`` names the real
  targets, ``hold_s`` the seconds until its heal, null while held until healed), ``heal``
  (``by_request``: healed by a heal command or the end of the faults phase):
  ``fault_id``, ``kind``, ``target``, ``params``, ``source`` (schedule|interactive),
  ``duration_s`` (as asked; null for kinds without one) and ``until_healed``;
  ``fault_error`` when an injection or a heal failed; ``fault_skipped`` (with ``reason``)
  when the cluster's server lacks a feature the fault needs (harness.servers), so it was not
  run.
- ``log``: ``level``, ``message``.
- ``stopped``: the run was cancelled (SIGTERM, SIGHUP, Ctrl-C) before its check: no verdict.
- ``verdict``: the final ``report`` (report.json's content) and ``exit_code``.

Commands flow the other way through ``control.sock`` (see harness.control_server).
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

    def phase(self, name: str, *, duration_s: float | None = None, waits_for: str | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
        """A phase begins: how long it lasts and what it waits for, for the TUI's phase bar."""
        given = {"duration_s": duration_s, "waits_for": waits_for, "timeout_s": timeout_s}
        return self.emit("phase", phase=name, **{k: v for k, v in given.items() if v is not None})

    def wait(self, waits_for: str, *, timeout_s: float | None = None, **details: Any
             ) -> dict[str, Any]:
        """The run now waits for something within its phase (at most ``timeout_s``)."""
        return self.emit("wait", waits_for=waits_for, timeout_s=timeout_s, **details)

    def close(self) -> None:
        self._file.close()
