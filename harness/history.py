"""The recorded history of a run: Jepsen-style operations, one JSON object per line.

Every process of a run (the publisher, each client, the nemesis, the harness itself) records
what it did and saw as :class:`Op` values::

    {"time": 12.5, "process": "client-3", "type": "ok", "f": "deliver",
     "value": {"channel": "results-1", "id": "p17", "seq": 17}}

``time`` is ``time.monotonic()`` (CLOCK_MONOTONIC), which is one clock for every process on a
machine, so files written by different worker processes can be merged by time. The checker
(:mod:`harness.checker`) is a pure function of these ops.

Ops used (see docs/experiments.md for the full list):

* publisher: ``publish`` invoke, then ok | fail (definitely not published) | info (unknown).
* client-<n>: ``connect`` ok, ``subscribe`` invoke/ok/fail, ``deliver`` ok (one per update the
  application received), ``disconnect`` info, ``drain`` ok (the final read; the end of that
  client's history).
* nemesis: ``fault`` invoke/ok (injection started/completed) and ``heal`` ok.
* harness: ``phase`` info.

Writing: each client worker process owns one file (``history-<worker>.jsonl``), so appends
need no locking; :func:`merge_histories` puts the files back together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, cast

import orjson

__all__ = [
    "HARNESS",
    "NEMESIS",
    "OP_TYPES",
    "PHASES",
    "PUBLISHER",
    "HistoryError",
    "HistoryWriter",
    "Op",
    "OpType",
    "iter_history",
    "merge_histories",
    "read_history",
]

OpType = Literal["invoke", "ok", "fail", "info"]
OP_TYPES: Final[frozenset[str]] = frozenset({"invoke", "ok", "fail", "info"})
PHASES: Final[tuple[str, ...]] = ("steady", "faults", "heal", "settle", "drain")

PUBLISHER: Final = "publisher"
NEMESIS: Final = "nemesis"
HARNESS: Final = "harness"


class HistoryError(ValueError):
    """A history line is not a valid op. The message names the file and line."""


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of the history. ``value`` must be JSON-serialisable; treat it as read-only."""

    time: float
    process: str
    type: OpType
    f: str
    value: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": dict(self.value),
        }

    def to_json(self) -> bytes:
        """One JSON line, without the trailing newline."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: object) -> Op:
        """Validate a decoded JSON object; raise :class:`HistoryError` if it is not an op."""
        if not isinstance(obj, dict):
            raise HistoryError(f"expected a JSON object, got {type(obj).__name__}")
        t = obj.get("time")
        process = obj.get("process")
        op_type = obj.get("type")
        f = obj.get("f")
        value = obj.get("value", {})
        # bool is an int subclass; a boolean time is a bug in the writer, not a timestamp.
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise HistoryError(f"'time' must be a number, got {t!r}")
        if not isinstance(process, str) or not process:
            raise HistoryError(f"'process' must be a non-empty string, got {process!r}")
        if op_type not in OP_TYPES:
            raise HistoryError(f"'type' must be one of invoke, ok, fail, info, got {op_type!r}")
        if not isinstance(f, str) or not f:
            raise HistoryError(f"'f' must be a non-empty string, got {f!r}")
        if not isinstance(value, dict):
            raise HistoryError(f"'value' must be an object, got {value!r}")
        return cls(float(t), process, cast(OpType, op_type), f, value)

    @classmethod
    def from_json(cls, line: bytes | str) -> Op:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise HistoryError(f"invalid JSON: {exc}") from None
        return cls.from_dict(obj)


class HistoryWriter:
    """Appends ops to a JSONL file, buffered.

    Ops are serialised at once (so a later mutation of a value dict cannot change the record)
    and written in one ``write()`` per flush. A flush happens when ``max_buffered`` ops are
    waiting, when an append finds the last flush older than ``flush_interval_s``, on
    :meth:`flush`/:meth:`close`, and every ``flush_interval_s`` while :meth:`autoflush` runs.

    Why plain blocking writes inside a trio program are acceptable: the file is local and a
    flush is at most ``max_buffered`` short lines (~100-200 KiB), which goes to the page cache
    in well under a millisecond; there is no ``fsync`` (ops must survive the writer's process
    being killed with at most one flush interval lost, not a host crash). Handing each write to
    a thread would cost more than the write. One writer per process and file: no locking.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval_s: float = 0.5,
        max_buffered: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be > 0")
        if max_buffered < 1:
            raise ValueError("max_buffered must be >= 1")
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self._clock = clock
        self._buffer: list[bytes] = []
        self._count = 0
        # Unbuffered: our own buffer decides when bytes reach the OS, one write per flush.
        self._file = open(self.path, "ab", buffering=0)
        self._last_flush = clock()

    @property
    def closed(self) -> bool:
        return self._file.closed

    @property
    def count(self) -> int:
        """Ops appended so far (written or buffered)."""
        return self._count

    def append(self, op: Op) -> None:
        if self._file.closed:
            raise ValueError(f"history writer for {self.path} is closed")
        self._buffer.append(op.to_json() + b"\n")
        self._count += 1
        if (
            len(self._buffer) >= self.max_buffered
            or self._clock() - self._last_flush >= self.flush_interval_s
        ):
            self.flush()

    def record(
        self,
        process: str,
        type: OpType,
        f: str,
        value: Mapping[str, Any] | None = None,
        *,
        time: float | None = None,
    ) -> Op:
        """Build an op stamped with the writer's clock (unless ``time`` is given), append it."""
        op = Op(self._clock() if time is None else time, process, type, f, dict(value or {}))
        self.append(op)
        return op

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            view = memoryview(data)
            # A raw file may write less than asked (rare, e.g. on a signal): loop until done.
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
        self._last_flush = self._clock()

    async def autoflush(self) -> None:
        """Flush every ``flush_interval_s`` until cancelled, so ops reach the file when idle.

        Run it in the nursery that owns the writer: ``nursery.start_soon(writer.autoflush)``.
        """
        import trio  # local: the writer and the checker stay importable without trio.

        while not self._file.closed:
            await trio.sleep(self.flush_interval_s)
            if not self._file.closed:
                self.flush()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.flush()
            finally:
                self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def iter_history(path: str | Path) -> Iterator[Op]:
    """Yield the ops of one JSONL file in file order.

    A final line without its newline is a write torn by the writer's process dying; it is
    skipped. Losing it can only make the check stricter (a missing delivery counts as lost, a
    missing drain as an unfinished client). Any other malformed line raises HistoryError.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Op.from_json(line)
            except HistoryError as exc:
                if not line.endswith(b"\n"):
                    return
                raise HistoryError(f"{path}:{lineno}: {exc}") from None


def read_history(path: str | Path) -> list[Op]:
    """All ops of one JSONL file, in file order."""
    return list(iter_history(path))


def merge_histories(paths: Iterable[str | Path]) -> list[Op]:
    """Ops of several files merged by time.

    The sort is stable: ops with equal times keep the order of ``paths`` and, within a file,
    the file order, so each process's own order is preserved.
    """
    ops: list[Op] = []
    for path in paths:
        ops.extend(iter_history(path))
    ops.sort(key=_op_time)
    return ops


def _op_time(op: Op) -> float:
    return op.time
