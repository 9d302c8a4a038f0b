"""Every shipped experiment (those with ci = true) passes headless with zero lost, duplicated
and reordered updates, and the negative controls fail: the checker can tell."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.experiment import load_experiment, shipped_experiments

from .runs import REPO, explain, report, turnout_run


def _faults(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    found = [f for f in doc["faults"] if f["fault"] == kind]
    assert found, f"no {kind} fault in the report"
    return found


def _nodes(doc: dict[str, Any]) -> list[dict[str, float]]:
    return [m for name, m in doc["cluster"].items() if name.startswith("node-")]


def _link_flaps(doc: dict[str, Any]) -> float:
    """Redis link changes beyond each node's first link-up (counters of unrestarted nodes)."""
    return sum(m.get("redis_link_changes_total", 1) - 1 for m in _nodes(doc))


def _storm_opened_every_connection(doc: dict[str, Any]) -> None:
    for fault in _faults(doc, "connection_storm"):
        observed = fault["observed"]
        assert observed["opened"] == observed["requested"] == fault["params"]["clients"], fault


def _watchdog_drained_the_leaking_node(doc: dict[str, Any]) -> None:
    (fault,) = _faults(doc, "leak_memory")
    assert fault["observed"].get("watchdog_exits") == [fault["target"]], fault


def _clients_reconnected(doc: dict[str, Any]) -> None:
    assert doc["cluster"]["fleet"]["reconnects"] > 0
    # Every fault that disconnected viewers reports their stale windows, never 0 s.
    for fault in doc["faults"]:
        if fault["fault"] in ("kill_node", "rolling_restart"):
            stale = fault["stale"]
            assert stale is not None, fault
            assert stale["viewers"] > 0, fault
            assert 0 < stale["p50"] <= stale["p99"] <= stale["max"], fault


def _scale_test(doc: dict[str, Any]) -> None:
    """election-night-10k: 10,000 viewers through a node kill, p99 <= 250 ms in steady and
    settle, and a CPU table that accounts for the deliveries."""
    _clients_reconnected(doc)
    assert doc["totals"]["clients"] == 10_000
    for phase in ("steady", "settle"):
        assert doc["latency_by_phase"][phase]["p99"] <= 250, doc["latency_by_phase"]
    cpu = doc["cpu"]
    assert cpu["deliveries_per_s"] > 4000, cpu
    assert {"nodes", "fleet workers", "HAProxy", "publisher", "harness"} <= set(
        cpu["components"]), cpu


def _redis_links_went_down_and_came_back(doc: dict[str, Any]) -> None:
    assert _link_flaps(doc) >= 2, _nodes(doc)
    assert all(m["redis_link_up"] == 1 for m in _nodes(doc))


def _presence_was_judged_through_the_faults(doc: dict[str, Any]) -> None:
    _clients_reconnected(doc)
    presence = doc["presence"]
    assert presence["finished"] == doc["totals"]["clients"], presence
    assert presence["connected_users"] == doc["totals"]["clients"], presence
    assert presence["member_events"] > 0, presence  # the faults made members come and go
    assert presence["ghosts"] == presence["missing"] == presence["inconsistent"] == 0, presence


def _slow_consumers_were_disconnected(doc: dict[str, Any]) -> None:
    (fault,) = _faults(doc, "slow_consumers")
    assert fault["observed"]["stalled"] > 0, fault
    assert sum(m["slow_consumer_disconnects_total"] for m in _nodes(doc)) > 0, _nodes(doc)


def _real_clients_kept_every_update(doc: dict[str, Any]) -> None:
    """real-clients: pusher-js, Echo and browser pages were there, went through the faults
    (some reconnected) and are judged with the fleet, group by group."""
    _clients_reconnected(doc)
    groups = doc["groups"]
    assert set(groups) == {"fleet", "pusher-js", "browser"}, groups
    real = doc["cluster"]["real_clients"]
    for name in ("pusher-js", "browser"):
        assert groups[name]["clients"] == real[name]["clients"] > 0, (groups, real)
        assert real[name]["drained"] == real[name]["clients"], real
        assert real[name]["delivered"] > 0, real
        assert groups[name]["lost"] == 0, groups
    assert sum(g["reconnects"] for g in real.values()) > 0, real


# What each experiment's faults must visibly have done: a pass where the fault did nothing
# (a storm that opened no connections, a leak the watchdog never saw) proves nothing.
EVIDENCE: dict[str, Callable[[dict[str, Any]], None]] = {
    "connection-storm": _storm_opened_every_connection,
    "memory-leak": _watchdog_drained_the_leaking_node,
    "node-kill": _clients_reconnected,
    "presence": _presence_was_judged_through_the_faults,
    "rolling-deploy": _clients_reconnected,
    "election-night": _clients_reconnected,
    "election-night-10k": _scale_test,
    "redis-partition": _redis_links_went_down_and_came_back,
    "real-clients": _real_clients_kept_every_update,
    "redis-restart": _redis_links_went_down_and_came_back,
    "slow-consumers": _slow_consumers_were_disconnected,
}

CI_EXPERIMENTS = sorted(name for name, path in shipped_experiments().items()
                        if load_experiment(path).ci)


def test_every_named_experiment_is_shipped_and_runs_in_ci():
    for name in ("baseline", "node-kill", "rolling-deploy", "node-pause", "redis-restart",
                 "redis-partition", "latency", "memory-leak", "slow-consumers",
                 "connection-storm", "election-night", "election-night-10k", "presence",
                 "real-clients"):
        assert name in CI_EXPERIMENTS, name


@pytest.mark.slow
@pytest.mark.parametrize("name", CI_EXPERIMENTS)
def test_shipped_experiment_passes(name: str, tmp_path: Path):
    run_dir = tmp_path / name
    started = time.monotonic()
    result = turnout_run(str(REPO / "experiments" / f"{name}.toml"), "--out", str(run_dir))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, explain(result, run_dir)
    if name == "election-night-10k":
        assert elapsed < 180, f"the scale test took {elapsed:.0f} s (limit 180 s)"
    doc = report(run_dir)
    assert doc["verdict"] == "pass"
    totals = doc["totals"]
    assert (totals["lost"], totals["duplicated"], totals["reordered"]) == (0, 0, 0)
    assert totals["delivered"] > 0
    for fault in doc["faults"]:
        assert fault["status"] == "ok", fault
    for artefact in ("history.jsonl", "report.md", "junit.xml", "events.jsonl"):
        assert (run_dir / artefact).stat().st_size > 0, artefact
    if name in EVIDENCE:
        EVIDENCE[name](doc)


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


@pytest.mark.slow
def test_real_clients_without_the_plugin_lose_updates(tmp_path: Path):
    """real-clients.toml with --plugin-off: the same pusher-js instances and pages without
    @turnout/pusher-resume resubscribe fresh after the faults and lose what was published
    meanwhile; the report says so per group while the resuming Python fleet loses nothing."""
    run_dir = tmp_path / "real-clients-plugin-off"
    result = turnout_run(str(REPO / "experiments" / "real-clients.toml"), "--out",
                         str(run_dir), "--plugin-off")
    assert result.returncode == 1, explain(result, run_dir)
    doc = report(run_dir)
    assert doc["verdict"] == "fail"
    assert doc["experiment"] == "real-clients-plugin-off"
    groups = doc["groups"]
    assert groups["fleet"]["lost"] == 0, groups
    assert groups["pusher-js"]["lost"] + groups["browser"]["lost"] == doc["totals"]["lost"] > 0
    assert groups["pusher-js"]["clients_losing"] > 0, groups
    assert any(v.startswith("lost = ") for v in doc["violations"]), doc["violations"]
    assert all(not c["client"].startswith("client-") for c in doc["clients"]), doc["clients"]
def test_presence_negative_control_reports_ghosts(tmp_path: Path):
    """presence.toml with nodes that do not reap dead nodes: the killed node's users stay in
    every list (ghosts), and the presence check must say so while every update still arrives."""
    run_dir = tmp_path / "presence-no-reaper"
    result = turnout_run(str(REPO / "experiments" / "presence.toml"), "--out", str(run_dir),
                         "--no-reaper")
    assert result.returncode == 1, explain(result, run_dir)
    doc = report(run_dir)
    assert doc["verdict"] == "fail"
    assert doc["presence"]["ghosts"] > 0, doc["presence"]
    assert [v for v in doc["violations"] if v.startswith("presence = ")], doc["violations"]
    assert doc["totals"]["lost"] == 0  # only presence is broken


@pytest.mark.slow
def test_the_kernel_balancer_keeps_every_update(tmp_path: Path):
    """election-night.toml as the full election night runs it: cluster.balancer = "kernel"
    (no HAProxy, the nodes share one port) and client_link_faults = "netfilter" (a latency
    spike on the viewers' links, with no Toxiproxy on them). A node kill and a rolling deploy
    still lose nothing, the viewers of each fault came back through the kernel's balancing, and
    the spike delayed the deliveries of its window only."""
    text = (REPO / "experiments" / "election-night.toml").read_text()
    assert "[cluster]\n" in text
    source = tmp_path / "election-night-kernel.toml"
    source.write_text(text.replace(
        "[cluster]\n", '[cluster]\nbalancer = "kernel"\nclient_link_faults = "netfilter"\n', 1)
        + '\n[[faults]]\nat_s = 13\nkind = "latency"\ntarget = "clients->lb[0]"\n'
        'latency_ms = 300\nduration_s = 8\n')
    run_dir = tmp_path / "kernel"
    result = turnout_run(str(source), "--out", str(run_dir))
    assert result.returncode == 0, explain(result, run_dir)
    doc = report(run_dir)
    assert doc["verdict"] == "pass"
    totals = doc["totals"]
    assert (totals["lost"], totals["duplicated"], totals["reordered"]) == (0, 0, 0)
    assert totals["delivered"] > 0
    _clients_reconnected(doc)
    assert "HAProxy" not in doc["cpu"]["components"], doc["cpu"]
    assert not list(run_dir.glob("logs/haproxy*")), "a kernel-balanced run started HAProxy"
    assert not list(run_dir.glob("logs/toxiproxy-lane*")), "a client link had a Toxiproxy"
    (spike,) = [f for f in doc["faults"] if f["fault"] == "latency"]
    assert spike["status"] == "ok", spike
    assert spike["observed"]["packets_held_downstream"] > 0, spike
    assert spike["latency_ms"]["p50"] >= 290, spike  # 300 ms on every delivery of the window
    assert doc["latency_by_phase"]["steady"]["p50"] < 150, doc["latency_by_phase"]
