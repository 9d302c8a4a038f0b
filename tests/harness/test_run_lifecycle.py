"""The headless run's contract beyond the verdict: exit 2 with a named cause when the harness
cannot run, no process outliving a run whatever stops it, and --target mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.redis_server import start_redis
from tests.support.procs import start_node

from .runs import REPO, explain, report, turnout_run

TINY = """
description = "tiny run for lifecycle tests"
[cluster]
nodes = 2
[clients]
count = 10
processes = 1
channels_per_client = 2
[workload]
channels = 2
publish_interval_s = 0.5
interval_jitter_s = 0.1
[phases]
steady_s = {steady}
faults_s = {faults}
heal_s = 1
settle_s = 2
{extra}
[invariants]
min_delivered = 10
"""


def tiny(tmp_path: Path, steady: float = 3, faults: float = 0, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(steady=steady, faults=faults, extra=extra))
    return path


def test_missing_binary_exits_2_naming_it(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = turnout_run(str(tiny(tmp_path)), "--out", str(run_dir),
                         env={"TURNOUT_TOXIPROXY_SERVER_BIN": "/nonexistent/toxiproxy-server"})
    assert result.returncode == 2, explain(result, run_dir)
    assert "toxiproxy-server not found" in result.stderr
    doc = report(run_dir)
    assert doc["verdict"] == "error"
    assert "toxiproxy-server" in doc["error"]


def test_malformed_experiment_exits_2_naming_the_key(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('description = "x"\n[phases]\nsteady_s = "ten"\n')
    result = turnout_run(str(path))
    assert result.returncode == 2
    assert "phases.steady_s" in result.stderr
    assert "bad.toml" in result.stderr


def _wait_for_phase(run_dir: Path, phase: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    events = run_dir / "events.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"harness exited early with {proc.returncode}"
        if events.exists():
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event.get("type") == "phase" and event.get("phase") == phase:
                    return
        time.sleep(0.2)
    raise AssertionError(f"phase {phase} not reached in {timeout} s")


def _gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def _start_run(tmp_path: Path, steady: float) -> tuple[subprocess.Popen[bytes], Path]:
    """``turnout run`` of the tiny file in the background, its stderr in a file (a pipe nobody
    reads can fill up and block the harness mid-teardown)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{REPO / '.tools' / 'bin'}:{os.environ['PATH']}"}
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", str(tiny(tmp_path, steady=steady)),
             "--out", str(run_dir)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
            stderr=stderr)
    return proc, run_dir


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_process_outlives_a_stopped_run(tmp_path: Path, how: signal.Signals):
    proc, run_dir = _start_run(tmp_path, steady=120)
    try:
        _wait_for_phase(run_dir, "steady", proc, timeout=120)
        descendants = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        names = {psutil.Process(p).name() for p in descendants}
        # the whole cluster is really there: redis, toxiproxy, haproxy, nodes, fleet
        assert len(descendants) >= 7, names
        proc.send_signal(how)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the harness outlived its signal by 60 s; its stderr:\n"
                                 + (tmp_path / "stderr.txt").read_text()[-3000:]) from None
        survivors = _gone(descendants, timeout=30)
        assert not survivors, [psutil.Process(p).cmdline() for p in survivors]
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(("victim", "cause"), [
    ("harness.fleet", "fleet worker fleet-w0 exited (status -9) before its final read"),
    # A dead Redis ends nothing at once (a Redis restart is a fault the nodes ride out): the
    # run notices at the heal, when the load balancer finds the nodes unhealthy
    ("redis-server", "load balancer not ready"),
])
def test_a_run_that_ends_in_error_still_says_where_the_cpu_went(
        tmp_path: Path, victim: str, cause: str):
    """A fleet worker or Redis dying mid-run ends the run in error naming it (and only it: the
    teardown's stopping of the workers is not a loss); the report still carries the CPU table
    up to the last sample (window steady to end), as report.md does."""
    proc, run_dir = _start_run(tmp_path, steady=10)
    try:
        _wait_for_phase(run_dir, "steady", proc, timeout=120)
        time.sleep(2.5)  # a few status samples into steady
        victims = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if victim in " ".join(p.cmdline())]
        assert victims
        next(v for v in victims if victim != "harness.fleet"
             or "fleet-w0" in " ".join(v.cmdline())).kill()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (tmp_path / "stderr.txt").read_text()[-3000:]
    doc = report(run_dir)
    assert doc["verdict"] == "error"
    assert cause in doc["error"]
    if victim != "harness.fleet":
        assert "fleet worker" not in doc["error"]
    assert doc["cpu"]["window"] == "steady to end"
    assert doc["cpu"]["components"]["nodes"]["cpu_s"] > 0
    assert "## Where the CPU went" in (run_dir / "report.md").read_text()


def test_target_mode_runs_against_an_external_endpoint(tmp_path: Path):
    redis = start_redis(tmp_path / "redis")
    node = start_node(tmp_path, redis.url, "external-1")
    try:
        extra = ('[[faults]]\nat_s = 1\nkind = "slow_consumers"\nshare = 0.3\n'
                 'duration_s = 2\n')
        run_dir = tmp_path / "run"
        result = turnout_run(str(tiny(tmp_path, steady=2, faults=4, extra=extra)), "--out",
                             str(run_dir), "--target", node.url)
        assert result.returncode == 0, explain(result, run_dir)
        doc = report(run_dir)
        assert doc["verdict"] == "pass"
        assert doc["target"] == node.url
        assert [f["fault"] for f in doc["faults"]] == ["slow_consumers"]
        assert not (run_dir / "haproxy-lane0.cfg").exists()  # no local cluster was started
    finally:
        node.kill()
        redis.stop()


def test_target_mode_refuses_process_faults_clearly(tmp_path: Path):
    extra = '[[faults]]\nat_s = 1\nkind = "kill_node"\ntarget = "node-1"\n'
    run_dir = tmp_path / "run"
    result = turnout_run(str(tiny(tmp_path, steady=1, faults=2, extra=extra)), "--out",
                         str(run_dir), "--target", "http://127.0.0.1:9")
    assert result.returncode == 2, explain(result, run_dir)
    assert "kill_node" in report(run_dir)["error"]
    assert "external --target" in report(run_dir)["error"]


def _turnout(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_run_reports_where_the_cpu_went_and_check_gives_its_verdict(tmp_path: Path):
    """`turnout run` ends with the CPU table (also in report.json and report.md), and `turnout
    check RUN_DIR` re-judges the folder to the live run's verdict, for a pass and a fail."""
    extra = '[[faults]]\nat_s = 1\nkind = "kill_node"\ntarget = "node-2"\nrestart_after_s = 1\n'
    run_dir = tmp_path / "run"
    result = turnout_run(str(tiny(tmp_path, steady=2, faults=3, extra=extra)), "--out",
                         str(run_dir))
    assert result.returncode == 0, explain(result, run_dir)
    assert "where the CPU went" in result.stderr
    doc = report(run_dir)
    cpu = doc["cpu"]
    assert cpu["deliveries"] > 0
    assert {"nodes", "fleet workers", "HAProxy", "Redis", "publisher", "harness"} <= set(
        cpu["components"])
    assert "proxies (Toxiproxy)" in cpu["components"]  # the node->redis proxies
    assert all(row["cpu_s"] >= 0 for row in cpu["components"].values())
    assert "## Where the CPU went" in (run_dir / "report.md").read_text()
    check = _turnout("check", str(run_dir))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "re-judged: pass; the live run's verdict: pass" in check.stderr

    # A failing run (an impossible latency limit), re-judged, fails the same way.
    failed = tmp_path / "failed"
    strict = tiny(tmp_path, steady=2, faults=0).read_text().replace(
        "[invariants]", "[invariants]\np99_ms = 0.001")
    (tmp_path / "strict.toml").write_text(strict)
    result = turnout_run(str(tmp_path / "strict.toml"), "--out", str(failed))
    assert result.returncode == 1, explain(result, failed)
    check = _turnout("check", str(failed))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "re-judged: fail; the live run's verdict: fail" in check.stderr
    assert json.loads((failed / "report.json").read_text())["violations"][0].startswith(
        "p99 latency")
