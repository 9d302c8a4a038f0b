"""Experiment and run listings, fault targets, phrases and descriptions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.experiment import FAULT_KINDS, parse_experiment, reference_markdown
from harness.faults.base import on, param, parameters, register
from harness.faults.link_toxic import Direction, LinkToxic, direction
from tui.catalog import (
    ClusterNames,
    FaultRequest,
    PhraseError,
    confirmation,
    convert_param,
    describe_fault,
    list_experiments,
    list_runs,
    new_run_dir,
    parse_fault_phrase,
    read_run,
    targets_for,
    topology_from_experiment,
)

TOPO = topology_from_experiment({"cluster": {"nodes": 3}})


def test_lists_every_experiment_file_with_its_parsed_content(fixtures: Path) -> None:
    entries = list_experiments(fixtures / "experiments")
    assert [e.name for e in entries] == ["baseline", "node-kill", "redis-partition", "tiny"]
    kill = entries[1]
    assert kill.experiment is not None
    assert len(kill.experiment.faults) == 2
    assert "kill_node" in kill.summary


def test_an_invalid_experiment_file_is_listed_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('description = "x"\n[cluster]\nnodes = "three"\n')
    [entry] = list_experiments(tmp_path)
    assert entry.experiment is None
    assert "cluster.nodes" in (entry.error or "")


def test_run_folders_newest_first_with_their_verdicts(runs_dir: Path) -> None:
    runs = list_runs(runs_dir)
    assert [(r.name, r.verdict) for r in runs] == [
        ("20250601-140000-tiny-interactive", "fail"),
        ("20250601-123000-tiny-stopped", "stopped"),
        ("20250601-121500-tiny-negative-control", "fail"),
        ("20250601-120000-tiny", "pass"),
    ]
    assert runs[2].report["totals"]["lost"] > 0


def test_a_run_without_report_json_takes_its_verdict_from_the_event_stream(
        runs_dir: Path) -> None:
    run = runs_dir / "20250601-120000-tiny"
    (run / "report.json").unlink()
    assert read_run(run).verdict == "pass"


def test_a_run_setting_up_counts_as_in_progress_until_it_goes_quiet(tmp_path: Path) -> None:
    run = tmp_path / "20250601-130000-x"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"t": 0, "type": "phase", "phase": "setup"})
                                      + "\n")
    assert read_run(run).in_progress
    os.utime(run / "events.jsonl", (1, 1))
    assert read_run(run).verdict == "stopped"


def test_new_run_dir_names_like_a_headless_run(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "node-kill")
    assert first.name.endswith("-node-kill")
    assert first.name[:8].isdigit()
    first.mkdir()
    second = new_run_dir(tmp_path, "node-kill")
    assert second != first
    assert "-node-kill" in second.name


def test_targets_follow_the_kind_and_the_live_cluster() -> None:
    assert targets_for("kill_node", TOPO) == ["random", "node-1", "node-2", "node-3", "all"]
    assert targets_for("partition_redis", TOPO) == [
        "redis", "node-1->redis", "node-2->redis", "node-3->redis"]
    latency = targets_for("latency", TOPO)
    assert latency[0] == "clients"
    assert "lb[0]->node-2" in latency
    assert "clients->lb[0]" in latency
    assert targets_for("connection_storm", TOPO)[:2] == ["lb", "lb[0]"]
    for kind in FAULT_KINDS:
        assert targets_for(kind, TOPO), kind


@pytest.mark.parametrize(("phrase", "kind", "target", "params", "duration"), [
    ("kill node-2", "kill_node", "node-2", {"restart": True}, None),
    ("kill node-3 no restart", "kill_node", "node-3", {"restart": False}, None),
    ("partition node-1 from Redis for 10 s", "partition_redis", "node-1->redis", {}, 10.0),
    ("partition redis", "partition_redis", "redis", {}, 5.0),
    ("add 300 ms latency to node-1->redis", "latency", "node-1->redis",
     {"latency_ms": 300.0}, 10.0),
    ("300ms latency on lb[0]->node-2 for 20s", "latency", "lb[0]->node-2",
     {"latency_ms": 300.0}, 20.0),
    ("leak 50 MB/s on node-1", "leak_memory", "node-1", {"mb_per_s": 50.0}, 20.0),
    ("pause node-3 for 5s", "pause_node", "node-3", {}, 5.0),
    ("throttle clients to 16 KB/s", "bandwidth", "clients", {"rate_kbps": 16.0}, 10.0),
    ("restart redis", "restart_redis", "redis", {}, None),
    ("rolling restart", "rolling_restart", "all", {}, None),
    ("20% slow consumers", "slow_consumers", "clients", {"share": 0.2}, 15.0),
    ("kill node 2", "kill_node", "node-2", {"restart": True}, None),
    ("kill node2 after 5 s", "kill_node", "node-2", {"restart_after_s": 5.0}, None),
    ("add latency to clients until healed", "latency", "clients", {}, None),
    ("kill every node", "kill_node", "all", {}, None),
    ("pause a random node for 3 s", "pause_node", "random", {}, 3.0),
    ("storm 5000 on lb[0]", "connection_storm", "lb[0]", {"clients": 5000}, 10.0),
    ("restart redis after 3 s flushed", "restart_redis", "redis",
     {"restart_after_s": 3.0, "flush": True}, None),
])
def test_palette_phrases_become_fault_requests(phrase: str, kind: str, target: str,
                                               params: dict, duration: float | None) -> None:
    request = parse_fault_phrase(phrase, TOPO)
    assert request is not None
    assert (request.kind, request.target, request.duration_s) == (kind, target, duration)
    for key, value in params.items():
        assert request.params[key] == value
    # Every parameter of the kind is filled in (defaults), as the control socket expects.
    assert set(request.params) == {k.name for k in FAULT_KINDS[kind].keys}


def test_a_phrase_naming_no_fault_is_none() -> None:
    assert parse_fault_phrase("heal all", TOPO) is None
    assert parse_fault_phrase("node-2", TOPO) is None


# Typed faults never change meaning: each example of issue 14 is refused, with the reason and
# what would be valid, where it used to be replaced by a default.
@pytest.mark.parametrize(("phrase", "error"), [
    ("kill node-9", "no node-9 in this cluster; its nodes are node-1, node-2, node-3 "
                    "(or random, all)"),
    ("add 300ms latency to node-2 for 5s",
     "latency acts on links: node-2's are lb[0]->node-2 and node-2->redis"),
    ("-5 ms latency on clients", "latency_ms: expected a number of milliseconds >= 0"),
    ("add -5 ms latency to node-1->redis", "latency_ms: expected a number of milliseconds"),
    ("pause node-1 for -5 s", "duration_s: expected a number of seconds > 0"),
    ("make 150% slow consumers", "share: expected a fraction between 0 and 1"),
    ("kill redis", "target: expected a target 'node-<n>', 'random' or 'all', got 'redis'"),
    ("partition node-4 from redis", "no node-4 in this cluster"),
    ("rolling restart for 10 s", "rolling_restart takes no duration"),
    ("add 100 ms latency to clients->lb[2]", "no load-balancer lane lb[2]"),
])
def test_a_phrase_the_harness_would_refuse_is_refused_with_the_reason(
        phrase: str, error: str) -> None:
    with pytest.raises(PhraseError) as refused:
        parse_fault_phrase(phrase, TOPO)
    assert error in str(refused.value)


def test_a_link_fault_named_on_a_node_suggests_that_nodes_links() -> None:
    with pytest.raises(PhraseError) as refused:
        parse_fault_phrase("add 300ms latency to node-2 for 5s", TOPO)
    assert [(s.kind, s.target, s.params["latency_ms"], s.duration_s)
            for s in refused.value.suggestions] == [
        ("latency", "lb[0]->node-2", 300.0, 5.0), ("latency", "node-2->redis", 300.0, 5.0)]


def test_destructive_faults_and_every_or_a_random_node_ask_first() -> None:
    def ask(phrase: str) -> str | None:
        request = parse_fault_phrase(phrase, TOPO)
        assert request is not None
        return confirmation(request)

    assert "SIGKILLs a server process" in (ask("kill node-2") or "")
    assert "every node at once" in (ask("pause every node for 5 s") or "")
    assert "at random" in (ask("leak 10 MB/s on a random node") or "")
    assert "EMPTY" in (ask("restart redis flushed") or "")
    assert ask("rolling restart") == "it restarts every node in turn"
    assert ask("add 300 ms latency to node-1->redis") is None
    assert ask("partition node-1 from redis for 5 s") is None
    assert ask("20% slow consumers") is None


def test_descriptions_read_as_sentences() -> None:
    assert describe_fault("kill_node", "node-2", {}, None) == "kill node-2 (restart after 2 s)"
    assert describe_fault("partition_redis", "node-1->redis", {}, 10) == \
        "partition node-1 from Redis for 10 s"
    assert describe_fault("latency", "clients", {"latency_ms": 300}, None) == \
        "add 300 ms latency to the clients' links until healed"
    assert describe_fault("leak_memory", "node-1", {"mb_per_s": 50.0}, 20.0) == \
        "leak 50 MB/s on node-1 for 20 s"


def test_the_inject_command_matches_the_control_socket_protocol() -> None:
    request = FaultRequest("kill_node", "node-2", {"restart": True, "restart_after_s": 2.0})
    assert request.command() == {"cmd": "inject", "kind": "kill_node", "target": "node-2",
                                 "params": {"restart": True, "restart_after_s": 2.0},
                                 "duration_s": None}


def test_parameters_go_through_the_schema_checks() -> None:
    [latency_ms, _jitter, direction] = FAULT_KINDS["latency"].keys
    assert convert_param("latency", latency_ms, "300") == 300.0
    assert convert_param("latency", direction, "upstream") == "upstream"
    with pytest.raises(ValueError, match="latency_ms"):
        convert_param("latency", latency_ms, "-5")
    with pytest.raises(ValueError, match="direction"):
        convert_param("latency", direction, "sideways")


def test_topology_lanes_come_from_the_links() -> None:
    topo = ClusterNames(("node-1",), ("clients->lb[0]", "clients->lb[1]", "lb[1]->node-1"))
    assert topo.lanes == ("lb[0]", "lb[1]")


def test_run_tui_refuses_a_path_that_is_no_run_folder(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tui.app import run_tui

    assert run_tui(tmp_path / "missing") == 2
    assert "no such run folder" in capsys.readouterr().err
    assert run_tui(tmp_path) == 2
    assert "not a run folder" in capsys.readouterr().err


# A run whose experiment needs no proxy on the clients' side (proxies = "auto", no client link
# in its schedule): only the node->redis links go through Toxiproxy.
REDIS_ONLY = ClusterNames(("node-1", "node-2"), ("node-1->redis", "node-2->redis"))


@pytest.mark.parametrize(("phrase", "error"), [
    ("add 300 ms latency to clients", "this run has no proxy on the clients' side"),
    ("add 300 ms latency to lb[0]->node-2", "this run has no proxy on the clients' side"),
])
def test_client_link_faults_without_client_proxies_say_why(phrase: str, error: str) -> None:
    with pytest.raises(PhraseError) as refused:
        parse_fault_phrase(phrase, REDIS_ONLY)
    assert error in str(refused.value)
    assert "node-1->redis" in str(refused.value)  # what it can target instead


def test_faults_on_the_client_fleet_need_no_proxy() -> None:
    # slow_consumers' "clients" is the fleet, not the clients' links
    assert "clients" in targets_for("slow_consumers", REDIS_ONLY)
    assert "clients" not in targets_for("latency", REDIS_ONLY)
    request = FaultRequest("slow_consumers", "clients", {"share": 0.2}).checked(REDIS_ONLY)
    assert request.target == "clients"


# The worked example of docs/architecture.md ("Adding a fault kind"), registered by the test.
@parameters
class DuplicateParams:
    share: float = param(0.05, "fraction", "share of the chunks sent twice",
                         expect="a fraction", gt=0, le=1, phrase=r"{N}\s*%", scale=0.01)
    direction: Direction = direction("downstream")


class DuplicateBytes(LinkToxic):
    kind = "duplicate_bytes"
    summary = "Send a share of the chunks on a link twice."
    duration_s = 10.0
    words = r"\bduplicat"
    Params = DuplicateParams
    toxic_type = "duplicate"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"duplicate {p.share * 100:g}% of the chunks on {on(target)}"


def test_a_new_fault_kind_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """One class is the whole kind for the experiment loader, the docs, the palette, the
    targets and the descriptions."""
    monkeypatch.setitem(FAULT_KINDS, "duplicate_bytes", DuplicateBytes)  # removed after
    register(DuplicateBytes)
    exp = parse_experiment('description = "d"\n[[faults]]\nat_s = 1\nkind = "duplicate_bytes"\n'
                           'share = 0.5\n', default_name="x")
    assert dict(exp.faults[0].params) == {"share": 0.5, "direction": "downstream"}
    with pytest.raises(ValueError, match=r"faults\[0\]\.share: expected a fraction between 0 "
                                         r"and 1, got 2"):
        parse_experiment('description = "d"\n[[faults]]\nat_s = 1\nkind = "duplicate_bytes"\n'
                         'share = 2\n', default_name="x")
    assert "#### `duplicate_bytes`" in reference_markdown()
    request = parse_fault_phrase("duplicate 10% on clients for 5 s", TOPO)
    assert request is not None
    assert (request.kind, request.target, request.params["share"], request.duration_s) == (
        "duplicate_bytes", "clients", 0.1, 5.0)
    assert request.describe() == "duplicate 10% of the chunks on the clients' links for 5 s"
    assert "clients->lb[0]" in targets_for("duplicate_bytes", TOPO)
