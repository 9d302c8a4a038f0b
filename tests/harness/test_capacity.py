"""The capacity finder's search and trial shape, with a stand-in for the runs (the real runs
are what ``turnout capacity`` does; docs/benchmarks.md records one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from harness.capacity import CapacitySearch, TrialShape, trial_experiment
from harness.experiment import Experiment, load_experiment

REPO = Path(__file__).resolve().parents[2]


def _fake(limit: int, calls: list[int]) -> Any:
    async def run_trial(experiment: Experiment, run_dir: Path) -> dict[str, Any]:
        n = experiment.clients.count
        calls.append(n)
        holds = n <= limit
        return {"verdict": "pass" if holds else "fail",
                "violations": [] if holds else [f"p99_ms: steady p99 = {n / 100:g} ms > 250 ms"],
                "totals": {"lost": 0},
                "latency_by_phase": {"steady": {"p99": n / 100}, "settle": {"p99": n / 120}},
                "cpu": {"deliveries_per_s": n * 0.8, "run_cores": 1.0}}
    return run_trial


async def test_bisection_finds_the_largest_count_that_holds(tmp_path: Path) -> None:
    base = load_experiment(REPO / "experiments" / "election-night-full.toml")
    calls: list[int] = []
    search = CapacitySearch(base, tmp_path, p99_ms=250, max_viewers=40_000, resolution=1000,
                            file="f.toml", run_trial=_fake(23_456, calls), echo=lambda _: None)
    answer, done = await search.run()
    assert done
    assert calls[0] == 40_000
    assert answer is not None
    assert 23_456 - 1000 <= answer <= 23_456
    assert len(calls) <= 8
    doc = json.loads((tmp_path / "capacity.json").read_text())
    assert doc["answer"] == answer
    assert doc["smallest_failing"] - answer <= 1000
    assert [t["viewers"] for t in doc["trials"]] == sorted(calls)
    md = (tmp_path / "capacity.md").read_text()
    assert f"Largest audience that held: {answer:,} viewers" in md

    # A second search over the same folder resumes: no trial is run again.
    again: list[int] = []
    resumed = CapacitySearch(base, tmp_path, p99_ms=250, max_viewers=40_000, resolution=1000,
                             file="f.toml", run_trial=_fake(23_456, again), echo=lambda _: None)
    assert (await resumed.run())[0] == answer
    assert again == []


async def test_a_pattern_that_holds_at_the_maximum_stops_there(tmp_path: Path) -> None:
    base = load_experiment(REPO / "experiments" / "election-night-full.toml")
    calls: list[int] = []
    search = CapacitySearch(base, tmp_path, p99_ms=250, max_viewers=5000, resolution=500,
                            file="f.toml", run_trial=_fake(10**9, calls), echo=lambda _: None)
    with trio.fail_after(5):
        assert await search.run() == (5000, True)
    assert calls == [5000]


def test_trial_keeps_the_pattern_and_squeezes_the_faults() -> None:
    base = load_experiment(REPO / "experiments" / "election-night-full.toml")
    trial = trial_experiment(base, 25_000, 250.0, TrialShape(30, 60, 10, 30))
    assert trial.clients.count == 25_000
    assert trial.cluster == base.cluster
    assert trial.workload == base.workload
    assert trial.clients.channels_per_client == base.clients.channels_per_client
    assert [f.kind for f in trial.faults] == [f.kind for f in base.faults]
    assert max(f.at_s for f in trial.faults) <= 60
    assert (trial.phases.steady_s, trial.phases.faults_s, trial.phases.settle_s) == (30, 60, 30)
    assert trial.invariants.p99_ms == 250.0
    assert trial.invariants.p99_phases == ("steady", "settle")
    assert trial.invariants.max_lost == 0
    assert trial.clients.processes * 12_000 >= 25_000


async def test_a_trial_that_could_not_run_is_a_failed_trial(tmp_path: Path) -> None:
    """A trial whose run ended in error has no CPU table (its cpu values are None): it is
    recorded as failing with the error, and the search goes on below it."""
    base = load_experiment(REPO / "experiments" / "election-night-full.toml")
    calls: list[int] = []

    async def run_trial(experiment: Experiment, run_dir: Path) -> dict[str, Any]:
        n = experiment.clients.count
        calls.append(n)
        if n > 3000:
            return {"verdict": "error", "error": "ProcessFailed: node-2 exited", "cpu": {}}
        return {"verdict": "pass", "violations": [], "totals": {"lost": 0},
                "latency_by_phase": {"steady": {"p99": 20.0}}, "cpu": {}}

    search = CapacitySearch(base, tmp_path, p99_ms=250, max_viewers=5000, resolution=1000,
                            file="f.toml", run_trial=run_trial, echo=lambda _: None)
    with trio.fail_after(5):
        answer, done = await search.run()
    assert done
    assert answer is not None
    assert answer <= 3000
    assert "error: ProcessFailed: node-2 exited" in (tmp_path / "capacity.md").read_text()
