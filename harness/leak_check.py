"""The leak detector: is a node's RSS flat over a long run? A pure function of recorded samples.

The samples are the ones every run already records: the ``status`` events of ``events.jsonl``
carry each node's ``pid`` and ``rss_bytes`` once a second (harness.events). A node restarted by
a fault is a new process with its own heap, so samples are split per (node, pid) *segment*.

For each segment long enough to judge (``min_span_s`` after its ``warmup_s``: a Python process
grows its arenas, caches and buffers at first, then levels off), the samples are reduced to one
median per ``bucket_s`` (robust to the spikes a connection storm or a slow consumer causes and
releases) and a least-squares line through the medians gives the slope in MB per hour. The
invariant ``rss_slope_mb_per_h`` holds when every judged segment's slope is at or below it.

``python -m harness.leak_check RUN_DIR`` prints the slopes and the RSS curve (per-bucket
medians and a sparkline per segment), which is what docs/benchmarks.md records for the soak.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from .checker import InvariantResult, Report

__all__ = [
    "RssSample",
    "SegmentSlope",
    "apply_rss_invariant",
    "check_rss_slope",
    "rss_samples",
    "segment_slopes",
]

MB = 1024 * 1024
WARMUP_S = 300.0
MIN_SPAN_S = 600.0
BUCKET_S = 60.0
_SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True, slots=True)
class RssSample:
    t: float  # seconds since the run started
    node: str
    pid: int
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class SegmentSlope:
    node: str
    pid: int
    start_s: float
    end_s: float
    judged: bool  # long enough after its warm-up to be judged
    slope_mb_per_h: float | None
    medians_mb: tuple[float, ...]  # one per bucket, warm-up included (for the curve)

    def describe(self) -> str:
        span = f"{self.node} (pid {self.pid}) {self.start_s:.0f}-{self.end_s:.0f} s"
        if not self.judged or self.slope_mb_per_h is None:
            return f"{span}: too short to judge"
        return f"{span}: {self.slope_mb_per_h:+.1f} MB/h"


def rss_samples(events: Iterable[bytes]) -> list[RssSample]:
    """Node RSS samples from the lines of an events.jsonl (other events are skipped)."""
    out = []
    for line in events:
        if b'"status"' not in line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut short by a crash
        if event.get("type") != "status":
            continue
        for name, node in (event.get("nodes") or {}).items():
            pid, rss = node.get("pid"), node.get("rss_bytes")
            # rss_bytes is the supervisor's int, or the node's own gauge (a float) when its
            # /metrics answered that second.
            if isinstance(pid, int) and isinstance(rss, int | float) and \
                    not isinstance(rss, bool) and node.get("state") == "up":
                out.append(RssSample(float(event["t"]), name, pid, int(rss)))
    return out


def _slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600


def segment_slopes(samples: Iterable[RssSample], *, warmup_s: float = WARMUP_S,
                   min_span_s: float = MIN_SPAN_S, bucket_s: float = BUCKET_S
                   ) -> list[SegmentSlope]:
    segments: dict[tuple[str, int], list[RssSample]] = {}
    for sample in samples:
        segments.setdefault((sample.node, sample.pid), []).append(sample)
    out = []
    for (node, pid), seg in sorted(segments.items(), key=lambda kv: (kv[0][0], kv[1][0].t)):
        seg.sort(key=lambda s: s.t)
        start, end = seg[0].t, seg[-1].t
        buckets: dict[int, list[float]] = {}
        for s in seg:
            buckets.setdefault(int((s.t - start) // bucket_s), []).append(s.rss_bytes / MB)
        medians = {b: statistics.median(v) for b, v in sorted(buckets.items())}
        judged_points = [((b + 0.5) * bucket_s, m) for b, m in medians.items()
                         if b * bucket_s >= warmup_s]
        judged = end - start - warmup_s >= min_span_s and len(judged_points) >= 3
        out.append(SegmentSlope(node, pid, start, end, judged,
                                _slope_per_hour(judged_points) if judged else None,
                                tuple(round(m, 1) for m in medians.values())))
    return out


def check_rss_slope(samples: Iterable[RssSample], limit_mb_per_h: float, **kwargs: float
                    ) -> InvariantResult:
    """The ``rss_slope_mb_per_h`` invariant over every judged segment."""
    slopes = segment_slopes(samples, **kwargs)
    judged = [s for s in slopes if s.judged and s.slope_mb_per_h is not None]
    limit = f"<= {limit_mb_per_h:g} MB/h"
    if not judged:
        return InvariantResult("rss_slope_mb_per_h", False, None, limit,
                               "no node ran long enough to judge its memory "
                               f"({len(slopes)} segments, none {MIN_SPAN_S:.0f} s past warm-up)")
    worst = max(judged, key=lambda s: s.slope_mb_per_h or 0.0)
    bad = [s for s in judged if (s.slope_mb_per_h or 0.0) > limit_mb_per_h]
    if bad:
        message = "RSS grows: " + "; ".join(s.describe() for s in bad)
    else:
        message = f"flat: worst {worst.describe()} ({len(judged)} segments judged)"
    return InvariantResult("rss_slope_mb_per_h", not bad,
                           round(worst.slope_mb_per_h or 0.0, 2), limit, message)


def apply_rss_invariant(report: Report, events_path: Path, limit_mb_per_h: float | None
                        ) -> Report:
    """``report`` with the RSS slope invariant added (and judged), if the experiment sets one."""
    if limit_mb_per_h is None or report.verdict == "error":
        return report
    try:
        samples = rss_samples(events_path.read_bytes().splitlines())
    except OSError as exc:
        samples = []
        message = f"cannot read {events_path}: {exc}"
        result = InvariantResult("rss_slope_mb_per_h", False, None,
                                 f"<= {limit_mb_per_h:g} MB/h", message)
    else:
        result = check_rss_slope(samples, limit_mb_per_h)
    violations = report.violations if result.ok else (*report.violations, result.message)
    return replace(report, invariants=(*report.invariants, result), violations=violations,
                   verdict=report.verdict if result.ok else "fail")


def sparkline(values: Sequence[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(_SPARK[min(len(_SPARK) - 1, int((v - low) / span * len(_SPARK)))]
                   for v in values)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.leak_check RUN_DIR", file=sys.stderr)
        return 2
    samples = rss_samples((Path(args[0]) / "events.jsonl").read_bytes().splitlines())
    for seg in segment_slopes(samples):
        print(seg.describe())
        if seg.medians_mb:
            print(f"  {min(seg.medians_mb):.1f}-{max(seg.medians_mb):.1f} MB "
                  f"{sparkline(seg.medians_mb)}")
            print("  per-minute medians (MB): " + " ".join(f"{m:.1f}" for m in seg.medians_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
