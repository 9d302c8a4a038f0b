"""The RSS leak detector (harness/leak_check.py): a pure function of recorded samples that must
pass a flat node, fail a leaking one, judge each process of a restarted node on its own, and
refuse to judge what it cannot."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from harness.checker import Invariants, check
from harness.experiment import parse_experiment
from harness.leak_check import (
    RssSample,
    apply_rss_invariant,
    check_rss_slope,
    rss_samples,
    segment_slopes,
    sparkline,
)

MB = 1024 * 1024


def series(node: str, pid: int, start: float, seconds: int, base_mb: float,
           mb_per_h: float, *, warmup_mb: float = 0.0, noise_mb: float = 2.0,
           seed: int = 1) -> list[RssSample]:
    """One sample a second: a warm-up ramp over 120 s, then base + slope, plus noise/spikes."""
    rng = random.Random(seed)
    out = []
    for i in range(seconds):
        ramp = warmup_mb * min(1.0, i / 120)
        spike = 25.0 if rng.random() < 0.01 else 0.0  # a storm's buffers, released at once
        mb = base_mb + ramp + mb_per_h * i / 3600 + rng.uniform(-noise_mb, noise_mb) + spike
        out.append(RssSample(start + i, node, pid, int(mb * MB)))
    return out


def test_a_flat_node_passes_despite_warm_up_noise_and_spikes() -> None:
    samples = series("node-1", 10, 0, 3600, 60, 0.0, warmup_mb=40)
    result = check_rss_slope(samples, 10)
    assert result.ok, result
    assert abs(result.actual or 0) < 3


def test_a_leaking_node_fails() -> None:
    samples = series("node-1", 10, 0, 3600, 60, 0.0) + series("node-2", 11, 0, 3600, 60, 30.0)
    result = check_rss_slope(samples, 10)
    assert not result.ok
    assert 25 < (result.actual or 0) < 35
    assert "node-2" in result.message
    assert "node-1" not in result.message


def test_each_process_of_a_restarted_node_is_its_own_segment() -> None:
    # A kill at 1800 s: the restarted process starts small; one line through both would
    # show a drop (or, the other way round, a rise) that is not a leak.
    before = series("node-3", 20, 0, 1800, 120, 0.0)
    after = series("node-3", 21, 1800, 1800, 50, 0.0, seed=2)
    slopes = segment_slopes(before + after)
    assert [(s.pid, s.judged) for s in slopes] == [(20, True), (21, True)]
    assert check_rss_slope(before + after, 10).ok
    # A short-lived process is reported but not judged.
    short = series("node-3", 22, 0, 500, 50, 100.0)
    (seg,) = segment_slopes(short)
    assert not seg.judged
    assert "too short" in seg.describe()


def test_nothing_long_enough_fails_instead_of_passing() -> None:
    result = check_rss_slope(series("node-1", 10, 0, 600, 60, 0.0), 10)
    assert not result.ok
    assert "no node ran long enough" in result.message


def _events(samples: list[RssSample]) -> bytes:
    by_t: dict[float, dict[str, object]] = {}
    for i, s in enumerate(samples):
        # As the runner records it: an int from the supervisor, or the node's gauge (float).
        rss: float = s.rss_bytes if i % 2 else float(s.rss_bytes)
        by_t.setdefault(s.t, {})[s.node] = {"state": "up", "pid": s.pid, "rss_bytes": rss,
                                           "connections": 3.0}
    lines = [orjson.dumps({"t": 0.0, "type": "run", "name": "x"})]
    for t, nodes in sorted(by_t.items()):
        lines.append(orjson.dumps({"t": t, "type": "status", "nodes": {
            **nodes, "redis": {"state": "running"}}, "links": {}}))
    lines.append(b'{"t": 99999, "type": "status", "nodes": {"node-1": {"state": "killed",')
    return b"\n".join(lines) + b"\n"


def test_samples_come_from_the_status_events(tmp_path: Path) -> None:
    samples = series("node-1", 10, 0, 900, 60, 0.0)
    path = tmp_path / "events.jsonl"
    path.write_bytes(_events(samples))
    parsed = rss_samples(path.read_bytes().splitlines())
    assert parsed == samples  # redis and the cut-off last line are skipped


def test_the_invariant_joins_the_report(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(_events(series("node-1", 10, 0, 1800, 60, 40.0)))
    base = check([], Invariants(min_delivered=1))
    unchanged = apply_rss_invariant(base, path, None)
    assert unchanged is base
    judged = apply_rss_invariant(base, path, 10)
    (result,) = [r for r in judged.invariants if r.name == "rss_slope_mb_per_h"]
    assert not result.ok
    assert judged.verdict == "fail"
    assert result.message in judged.violations


def test_experiment_files_set_the_limit() -> None:
    text = 'description = "' + "x" * 90 + '"\n[invariants]\nrss_slope_mb_per_h = 12.5\n'
    exp = parse_experiment(text, source="t.toml", default_name="t")
    assert exp.invariants.max_rss_slope_mb_per_h == 12.5
    assert parse_experiment(text.replace("rss_slope_mb_per_h = 12.5\n", ""), source="t.toml",
                            default_name="t").invariants.max_rss_slope_mb_per_h is None


def test_sparkline() -> None:
    assert sparkline([1, 1, 1]) == "▁▁▁"
    assert sparkline([0, 7]) == "▁█"
    assert sparkline([]) == ""
