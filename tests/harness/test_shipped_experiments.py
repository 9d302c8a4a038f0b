"""Every shipped experiment (those with ci = true) passes headless with zero lost, duplicated
and reordered updates, and the negative controls fail: the checker can tell."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiment import load_experiment, shipped_experiments

from .runs import REPO, explain, report, turnout_run

CI_EXPERIMENTS = sorted(name for name, path in shipped_experiments().items()
                        if load_experiment(path).ci)


def test_every_named_experiment_is_shipped_and_runs_in_ci():
    for name in ("baseline", "node-kill", "rolling-deploy", "node-pause", "redis-restart",
                 "redis-partition", "latency", "memory-leak", "slow-consumers",
                 "connection-storm", "election-night"):
        assert name in CI_EXPERIMENTS, name


@pytest.mark.slow
@pytest.mark.parametrize("name", CI_EXPERIMENTS)
def test_shipped_experiment_passes(name: str, tmp_path: Path):
    run_dir = tmp_path / name
    result = turnout_run(str(REPO / "experiments" / f"{name}.toml"), "--out", str(run_dir))
    assert result.returncode == 0, explain(result, run_dir)
    doc = report(run_dir)
    assert doc["verdict"] == "pass"
    totals = doc["totals"]
    assert (totals["lost"], totals["duplicated"], totals["reordered"]) == (0, 0, 0)
    assert totals["delivered"] > 0
    for fault in doc["faults"]:
        assert fault["status"] == "ok", fault
    for artefact in ("history.jsonl", "report.md", "junit.xml", "events.jsonl"):
        assert (run_dir / artefact).stat().st_size > 0, artefact


@pytest.mark.slow
@pytest.mark.parametrize("name", ["node-kill", "redis-partition"])
def test_negative_control_reports_drops(name: str, tmp_path: Path):
    """The same experiment with history off on the nodes must lose updates and say so."""
    run_dir = tmp_path / f"{name}-no-recovery"
    result = turnout_run(str(REPO / "experiments" / f"{name}.toml"), "--out", str(run_dir),
                         "--no-recovery")
    assert result.returncode == 1, explain(result, run_dir)
    doc = report(run_dir)
    assert doc["verdict"] == "fail"
    assert doc["totals"]["lost"] > 0
    assert any("lost" in v for v in doc["violations"])
