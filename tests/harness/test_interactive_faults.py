"""Interactive faults against a real headless run (Redis, Toxiproxy, HAProxy, 2 nodes, 10
clients): overlapping faults sent over control.sock, one of them held "until healed", and the
run still ends on schedule (it used to wait 180 s), with every fault recorded and healed."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .runs import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EXPERIMENT = """
description = "interactive faults overlap"
[cluster]
nodes = 2
# every link proxied: interactive faults may target the clients' links (with "auto" only the
# links the schedule needs are, and this experiment schedules none)
proxies = "all"
[clients]
count = 10
processes = 1
channels_per_client = 2
[workload]
channels = 2
publish_interval_s = 0.5
interval_jitter_s = 0.1
[phases]
steady_s = 3
faults_s = 6
heal_s = 1
settle_s = 2
[invariants]
min_delivered = 10
"""


def send(sock_path: Path, command: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(json.dumps(command).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for_phase(run_dir: Path, phase: str, proc: subprocess.Popen[bytes],
                   timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"harness exited early with {proc.returncode}"
        for event in events_of(run_dir):
            if event["type"] == "phase" and event["phase"] == phase:
                return event
        time.sleep(0.1)
    raise AssertionError(f"no {phase} phase within {timeout} s")


def test_overlapping_interactive_faults_end_on_schedule(tmp_path: Path) -> None:
    experiment = tmp_path / "overlap.toml"
    experiment.write_text(EXPERIMENT)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}"}
    with open(tmp_path / "harness.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(experiment),
                                 "--out", str(run_dir)], cwd=REPO, env=env, stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL)
    try:
        faults = wait_for_phase(run_dir, "faults", proc, 120)
        assert faults["duration_s"] == 6
        control = run_dir / "control.sock"
        # i1: held until healed (no duration); i2 overlaps it; i3 overlaps both.
        held = send(control, {"cmd": "inject", "kind": "latency", "target": "node-1->redis",
                              "params": {"latency_ms": 50}, "duration_s": None})
        assert held["ok"], held
        assert held["fault_id"] == "i1"
        assert held["duration_s"] is None
        time.sleep(0.5)
        kill = send(control, {"cmd": "inject", "kind": "kill_node", "target": "node-2",
                              "params": {"restart_after_s": 1.0}})
        assert kill["ok"], kill
        latency = send(control, {"cmd": "inject", "kind": "latency", "target": "clients",
                                 "params": {"latency_ms": 20}, "duration_s": 2})
        assert latency["ok"], latency
        refused = send(control, {"cmd": "inject", "kind": "kill_node", "target": "node-9"})
        assert not refused["ok"]
        assert "no node-9" in refused["error"]
        heal = wait_for_phase(run_dir, "heal", proc, 60)
        # on schedule: the faults phase lasts its 6 s plus the few seconds the faults that
        # still had a known end needed, not the 180 s the run used to wait
        assert heal["t"] - faults["t"] < 6 + 8, (faults, heal)
        after = send(control, {"cmd": "inject", "kind": "latency", "target": "clients"})
        assert not after["ok"]
        assert "faults phase is over" in after["error"]
        assert proc.wait(timeout=120) == 0, (tmp_path / "harness.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    events = events_of(run_dir)
    # every status event carries the CPU seconds of each component so far (the TUI's live
    # CPU split): the nodes and the fleet worked, and nobody's total goes down
    cpu = [e["cpu"] for e in events if e["type"] == "status"]
    assert cpu
    assert cpu[-1]["cores"] >= 1
    assert cpu[-1]["components"]["nodes"] > 0
    assert cpu[-1]["components"]["fleet workers"] > 0
    for before, after in itertools.pairwise(cpu):
        for name, seconds in before["components"].items():
            assert after["components"].get(name, 0.0) >= seconds, (name, before, after)
    waits = [e for e in events if e["type"] == "wait" and "faults" in e]
    assert waits, "the faults phase says what it waits for"
    assert any(e["type"] == "log" and "i1" in e["message"] and "held until healed"
               in e["message"] for e in events)
    healed = {e["fault_id"] for e in events if e["type"] == "heal"}
    assert healed == {"i1", "i2", "i3"}
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == "pass", report["violations"]
    assert {f["fault_id"] for f in report["faults"]} == {"i1", "i2", "i3"}
    # one time base: report.json's fault times are events.jsonl's t
    injected = {e["fault_id"]: e["t"] for e in events if e["type"] == "fault"}
    for fault in report["faults"]:
        assert fault["injected_at"] == pytest.approx(injected[fault["fault_id"]], abs=0.2)
