"""Publish-to-receive latency, overall, per phase and per fault window (pure).

The latency of a delivered owed (viewer, update) pair is its first receive time minus the
update's publish invoke time. The fleet books it per update in log-linear buckets (7
significant bits, :func:`harness.recording.latency_bucket`); here every bucket is counted at
its *upper* bound, so a reported percentile is never below the true one and at most 1/64
above it, and HdrHistogram (1 µs .. 1 h, 3 significant digits) gives the percentiles.
``max`` is exact: the last owed receive of each update minus its invoke.

An update belongs to the phase (steady, faults, heal, settle) and to every fault window
(injection to heal) in which its publish was invoked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hdrh.histogram import HdrHistogram

from harness.recording import LATENCY_BITS

from .model import Pub, RunData

__all__ = ["PERCENTILES", "LatencyResult", "empty_latency", "judge_latency", "phase_windows"]

LATENCY_MIN_US: Final = 1
LATENCY_MAX_US: Final = 3600 * 1_000_000
LATENCY_DIGITS: Final = 3
PERCENTILES: Final[dict[str, float]] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
PHASES: Final = ("steady", "faults", "heal", "settle")


@dataclass(frozen=True)
class LatencyResult:
    overall: dict[str, float | None]
    by_phase: dict[str, dict[str, float | None]]
    by_fault: dict[str, dict[str, float | None]]


def empty_latency() -> dict[str, float | None]:
    return {**dict.fromkeys(PERCENTILES, None), "max": None, "count": 0}


def phase_windows(phases: Sequence[tuple[str, float]], end: float
                  ) -> dict[str, tuple[float, float]]:
    """(start, end) of each recorded phase: from its phase op to the next one."""
    ordered = sorted(phases, key=lambda p: p[1])
    out: dict[str, tuple[float, float]] = {}
    for i, (name, start) in enumerate(ordered):
        stop = ordered[i + 1][1] if i + 1 < len(ordered) else end
        if name not in out:
            out[name] = (start, stop)
    return out


def _upper(bucket: int) -> int:
    shift = bucket.bit_length() - LATENCY_BITS
    return bucket + (1 << shift) - 1 if shift > 0 else bucket


class _Acc:
    __slots__ = ("counts", "max_s")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.max_s = -math.inf

    def add(self, hist: Mapping[int, int], max_s: float) -> None:
        counts = self.counts
        for bucket, n in hist.items():
            counts[bucket] = counts.get(bucket, 0) + n
        if max_s > self.max_s:
            self.max_s = max_s

    def result(self) -> dict[str, float | None]:
        if not self.counts:
            return empty_latency()
        hist = HdrHistogram(LATENCY_MIN_US, LATENCY_MAX_US, LATENCY_DIGITS)
        total = 0
        for bucket, n in self.counts.items():
            # Out-of-range values are clamped, never dropped: a histogram that silently loses
            # the worst latencies would flatter the run.
            hist.record_value(min(max(_upper(bucket), LATENCY_MIN_US), LATENCY_MAX_US), n)
            total += n
        values = hist.get_percentile_to_value_dict(list(PERCENTILES.values()))
        max_ms = round(max(self.max_s, 0.0) * 1000.0, 3)
        # A percentile above the exact maximum would read as nonsense: clip at it.
        out: dict[str, float | None] = {
            key: min(round(values[pct] / 1000.0, 3), max_ms) for key, pct in PERCENTILES.items()}
        out["max"] = max_ms
        out["count"] = total
        return out


def judge_latency(data: RunData, owable: Mapping[str, Pub],
                  fault_windows: Iterable[tuple[str, float, float]]) -> LatencyResult:
    windows = phase_windows(data.phases, data.t1)
    phase_list = [(name, windows[name]) for name in PHASES if name in windows]
    faults = list(fault_windows)
    overall = _Acc()
    by_phase = {name: _Acc() for name, _ in phase_list}
    by_fault = {fid: _Acc() for fid, _a, _b in faults}
    for pid, (_first, last, hist) in data.latency.items():
        pub = owable.get(pid)
        if pub is None or not hist:
            continue
        invoke = pub.invoke
        max_s = last - invoke
        overall.add(hist, max_s)
        for name, (start, stop) in phase_list:
            if start <= invoke < stop:
                by_phase[name].add(hist, max_s)
                break
        for fid, start, stop in faults:
            if start <= invoke <= stop:
                by_fault[fid].add(hist, max_s)
    return LatencyResult(overall.result(), {k: v.result() for k, v in by_phase.items()},
                         {k: v.result() for k, v in by_fault.items()})
