"""Log lines that peers can cause: clipped and rate-limited, so no client can flood the log.

Anything a client sends (an event name, a path, a channel) reaches a log line only through
``clip``: at most ``CLIP`` characters, quoted with control characters escaped, so one line stays
one line. Lines about client input go through ``PeerLog``, a token bucket shared by the whole
node: ``rate`` lines per second with bursts of five seconds' worth. Lines over it are counted
(``turnout_log_lines_suppressed_total``) and summarised, at most once a second, before the
next line that is written. The
bound is per node on purpose: 40,000 clients each allowed a few lines would still be a flood.

``ErrorLog`` is the same idea for unexpected exceptions (bugs): one traceback per code location
per minute, however many connections hit it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CLIP", "ErrorLog", "PeerLog", "clip"]

CLIP = 200
BURST_SECONDS = 5.0
SUMMARY_EVERY_S = 1.0
ERROR_REPEAT_S = 60.0
_MAX_ERROR_SITES = 256


def clip(value: object, limit: int = CLIP) -> str:
    """``value`` as a quoted, escaped string of at most ``limit`` characters (plus a marker)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...(+{len(text) - limit} chars)"


class PeerLog:
    """A token bucket for log lines about peer input, shared by one node."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * BURST_SECONDS)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()
        self._pending = 0  # suppressed since the last summary
        self._last_summary = self._last
        self.suppressed = 0  # ever

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self._pending += 1
        self.suppressed += 1
        return False

    def log(self, logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
        if not logger.isEnabledFor(level) or not self.allow():
            return
        if self._pending and self._last - self._last_summary >= SUMMARY_EVERY_S:
            # At most one summary a second, so a flood adds one line a second, not one a line.
            logger.warning("%d log lines about client input suppressed (over %g lines/s)",
                           self._pending, self.rate)
            self._pending = 0
            self._last_summary = self._last
        logger.log(level, msg, *args)

    def info(self, logger: logging.Logger, msg: str, *args: Any) -> None:
        self.log(logger, logging.INFO, msg, *args)

    def warning(self, logger: logging.Logger, msg: str, *args: Any) -> None:
        self.log(logger, logging.WARNING, msg, *args)


class ErrorLog:
    """Unexpected exceptions: a traceback once per code location per ERROR_REPEAT_S."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str, int], float] = {}
        self._repeats: dict[tuple[str, str, int], int] = {}

    def log(self, logger: logging.Logger, what: str, exc: BaseException) -> bool:
        """Log ``exc`` (with traceback) unless its site was logged recently; True if logged."""
        site = _site(exc)
        now = self._clock()
        last = self._last.get(site)
        if last is not None and now - last < ERROR_REPEAT_S:
            self._repeats[site] = self._repeats.get(site, 0) + 1
            return False
        if len(self._last) >= _MAX_ERROR_SITES:
            self._last.clear()
            self._repeats.clear()
        repeats = self._repeats.pop(site, 0)
        self._last[site] = now
        more = f" ({repeats} more like it since the last report)" if repeats else ""
        logger.error("unexpected error %s; closed that connection only%s", what, more,
                     exc_info=exc)
        return True


def _site(exc: BaseException) -> tuple[str, str, int]:
    """(exception type, file, line) of where ``exc`` was raised; groups use their first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return (type(exc).__name__, "", 0)
    return (type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno)
