"""Experiment files: shipped files load, every kind of mistake gets a precise message."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest

from harness.checker import Invariants
from harness.experiment import (
    DOCS_BEGIN,
    DOCS_END,
    FAULT_KEYS,
    FAULT_KINDS,
    SECTIONS,
    Clients,
    Cluster,
    Experiment,
    ExperimentError,
    Phases,
    Workload,
    load_experiment,
    parse_experiment,
    parse_target,
    reference_markdown,
    shipped_experiments,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "experiments.md"
SHIPPED = (
    "baseline",
    "node-kill",
    "rolling-deploy",
    "node-pause",
    "redis-restart",
    "redis-partition",
    "latency",
    "memory-leak",
    "slow-consumers",
    "connection-storm",
    "election-night",
    "election-night-full",
)

MINIMAL = 'description = "d"\n'


def parse(text: str) -> Experiment:
    return parse_experiment(text, source="x.toml", default_name="x")


def error(text: str) -> str:
    with pytest.raises(ExperimentError) as info:
        parse(text)
    return str(info.value)


# -- shipped files ---------------------------------------------------------------------------


def test_every_shipped_experiment_loads() -> None:
    files = shipped_experiments()
    assert set(SHIPPED) <= set(files)
    for name, path in files.items():
        exp = load_experiment(path)
        assert exp.name == name
        assert len(exp.description) > 80, f"{name}: say what it proves"
        assert exp.invariants.min_delivered >= 1
        if exp.ci and name != "election-night-10k":
            # CI-sized: modest fleets (a storm may add its own connections) and short runs.
            assert exp.clients.count <= 600, name
            assert exp.phases.total_s <= 120, name


def test_shipped_experiments_cover_their_faults() -> None:
    kinds = {name: {f.kind for f in load_experiment(p).faults}
             for name, p in shipped_experiments().items()}
    assert kinds["baseline"] == set()
    assert "kill_node" in kinds["node-kill"]
    assert "rolling_restart" in kinds["rolling-deploy"]
    assert "pause_node" in kinds["node-pause"]
    assert "restart_redis" in kinds["redis-restart"]
    assert "partition_redis" in kinds["redis-partition"]
    assert "latency" in kinds["latency"]
    assert "leak_memory" in kinds["memory-leak"]
    assert "slow_consumers" in kinds["slow-consumers"]
    assert {"kill_node", "rolling_restart"} <= kinds["election-night"]
    storm = load_experiment(shipped_experiments()["connection-storm"])
    assert storm.faults[0].params["clients"] == 10000
    full = load_experiment(shipped_experiments()["election-night-full"])
    assert full.ci is False
    assert full.clients.count == 40000
    assert full.cluster.nodes >= 5
    assert full.clients.processes > 1
    assert full.invariants.p99_ms == 250
    assert full.invariants.p99_phases == ("steady", "settle")
    # The CI scale test: 10,000 viewers, a node kill, p99 <= 250 ms, in CI.
    scale = load_experiment(shipped_experiments()["election-night-10k"])
    assert scale.ci is True
    assert scale.clients.count == 10000
    assert "kill_node" in kinds["election-night-10k"]
    assert (scale.invariants.p99_ms, scale.invariants.max_lost) == (250, 0)
    # 100,000: no process may pass the 20,000-file cap, a node kill included.
    big = load_experiment(shipped_experiments()["election-night-100k"])
    assert big.ci is False
    assert big.clients.count == 100_000
    assert big.clients.count / (big.cluster.nodes - 1) < 18_000
    assert big.clients.count / big.clients.processes <= 15_000
    # Every kind is exercised by some shipped experiment.
    assert set().union(*kinds.values()) == set(FAULT_KINDS)


# -- the model -------------------------------------------------------------------------------


def test_minimal_file_gets_defaults() -> None:
    exp = parse(MINIMAL)
    assert exp.name == "x"
    assert exp.cluster == Cluster()
    assert exp.clients == Clients()
    assert exp.workload == Workload()
    assert exp.phases == Phases()
    assert exp.invariants == Invariants()
    assert exp.faults == ()
    assert exp.workload.channel_names == ("results-1", "results-2", "results-3", "results-4")
    assert exp.phases.total_s == 55.0


def test_schema_defaults_match_dataclass_defaults() -> None:
    models: dict[str, Cluster | Clients | Workload | Phases] = {
        "cluster": Cluster(), "clients": Clients(), "workload": Workload(), "phases": Phases(),
    }
    for section, model in models.items():
        fields = {f.name for f in dataclasses.fields(model)}
        assert fields == {k.name for k in SECTIONS[section]}, section
        for key in SECTIONS[section]:
            assert getattr(model, key.name) == key.default, f"{section}.{key.name}"
    inv = Invariants()
    for key in SECTIONS["invariants"]:
        field = {"lost": "max_lost", "duplicated": "max_duplicated",
                 "reordered": "max_reordered", "unexpected": "max_unexpected",
                 "unsubscribed": "max_unsubscribed", "recovery_s": "max_recovery_s",
                 "rss_slope_mb_per_h": "max_rss_slope_mb_per_h"}
        assert getattr(inv, field.get(key.name, key.name)) == key.default, key.name


def test_faults_and_invariants_convert() -> None:
    exp = parse(
        MINIMAL
        + """
[[faults]]
at_s = 5
kind = "latency"
target = "lb->node-1"
latency_ms = 250

[[faults]]
at_s = 7.5
kind = "kill_node"

[invariants]
lost = 2
p99_ms = 800
recovery_s = 12
min_delivered = 100
"""
    )
    lat, kill = exp.faults
    assert (lat.fault_id, lat.kind, lat.at_s, lat.target, lat.duration_s) == (
        "f1", "latency", 5.0, "lb->node-1", 10.0,
    )
    assert dict(lat.params) == {"latency_ms": 250.0, "jitter_ms": 0.0, "direction": "both"}
    assert (kill.fault_id, kill.target, kill.duration_s) == ("f2", "random", None)
    assert dict(kill.params) == {"restart": True, "restart_after_s": 2.0}
    assert exp.invariants == Invariants(
        max_lost=2, p99_ms=800.0, max_recovery_s=12.0, min_delivered=100
    )


def test_scaled_and_negative_control() -> None:
    exp = load_experiment(shipped_experiments()["connection-storm"])
    small = exp.scaled(0.1)
    assert small.clients.count == 10
    assert small.clients.processes == min(exp.clients.processes, 10)
    assert small.faults[0].params["clients"] == 1000
    assert exp.scaled(2).clients.count == 2 * exp.clients.count
    assert exp.scaled(0.0001).clients.count == 1
    with pytest.raises(ValueError, match="scale factor"):
        exp.scaled(0)
    neg = exp.negative_control()
    assert neg.cluster.recovery is False
    assert neg.cluster.effective_history_size == 0
    assert exp.cluster.effective_history_size == exp.cluster.history_size


def test_experiment_is_frozen_and_picklable() -> None:
    exp = load_experiment(shipped_experiments()["election-night"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        exp.faults[0].params["restart_after_s"] = 1  # type: ignore[index]
    assert pickle.loads(pickle.dumps(exp)) == exp
    assert exp.to_dict()["faults"][0]["fault_id"] == "f1"


def test_parse_target_forms() -> None:
    assert parse_target("node-2") is not None
    cases = {
        "node-12": "node", "random": "random", "all": "all", "redis": "redis",
        "clients": "clients", "lb": "lb", "clients->lb": "client_link",
        "clients->lb[1]": "client_link", "lb->node-1": "lb_link", "lb[0]->node-3": "lb_link",
        "node-1->redis": "redis_link", "all->redis": "redis_link",
    }
    for text, cls in cases.items():
        target = parse_target(text)
        assert target is not None, text
        assert target.cls == cls, text
    assert parse_target("node-1->redis").node == 1  # type: ignore[union-attr]
    for bad in ("node-0", "node-x", "redis->node-1", "lb->redis", "", "Node-1", "node-1 "):
        assert parse_target(bad) is None, bad


# -- error messages --------------------------------------------------------------------------


def test_error_names_file_key_expectation_and_value() -> None:
    msg = error(MINIMAL + "[[faults]]\nkind = 'kill_node'\nat_s = 1\n"
                "[[faults]]\nkind = 'kill_node'\nat_s = 1\n"
                "[[faults]]\nkind = 'kill_node'\nat_s = 'ten'\n")
    assert msg == "x.toml: faults[2].at_s: expected a number of seconds >= 0, got 'ten'"


def test_load_experiment_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(MINIMAL + "[cluster]\nnodes = 0\n")
    with pytest.raises(ExperimentError) as info:
        load_experiment(path)
    assert str(info.value) == f"{path}: cluster.nodes: expected an integer between 1 and 64, got 0"
    assert info.value.key == "cluster.nodes"
    with pytest.raises(ExperimentError, match="cannot read the file"):
        load_experiment(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("description = 'd'\n[cluster\n", r"^x\.toml: invalid TOML: "),
        ("", r"^x\.toml: description: missing; expected a non-empty string$"),
        ("description = ''\n", r"^x\.toml: description: expected a non-empty string, got ''$"),
        (MINIMAL + "zzz = 1\n", r"^x\.toml: zzz: unknown key; allowed: name, desc"),
        (MINIMAL + "[cluster]\nnodez = 3\n",
         r"^x\.toml: cluster\.nodez: unknown key \(did you mean 'nodes'\?\); allowed: nodes, "),
        (MINIMAL + "[cluster]\nnodes = true\n",
         r"^x\.toml: cluster\.nodes: expected an integer between 1 and 64, got true$"),
        (MINIMAL + "[cluster]\nnodes = 2.5\n",
         r"^x\.toml: cluster\.nodes: expected an integer between 1 and 64, got 2\.5$"),
        (MINIMAL + "[cluster]\nrecovery = 'yes'\n",
         r"^x\.toml: cluster\.recovery: expected true or false, got 'yes'$"),
        (MINIMAL + "[clients]\nconnect_rate_per_s = 0\n",
         r"^x\.toml: clients\.connect_rate_per_s: expected a number per second > 0, got 0$"),
        (MINIMAL + "[clients]\nsource_addresses = ['127.0.0.1', 'nope']\n",
         r"^x\.toml: clients\.source_addresses: expected an array of IP addresses, got 'nope' "),
        (MINIMAL + "[workload]\npayload_bytes = 20000\n",
         r"^x\.toml: workload\.payload_bytes: expected an integer between 16 and 10240, "),
        (MINIMAL + "[workload]\nchannel_prefix = 'a b'\n",
         r"^x\.toml: workload\.channel_prefix: expected a Pusher channel name prefix, got 'a b'"),
        (MINIMAL + "name = 'Bad Name'\n", r"^x\.toml: name: expected a lowercase name"),
        (MINIMAL + "cluster = 3\n", r"^x\.toml: cluster: expected a table \[cluster\], got 3$"),
        (MINIMAL + "faults = 3\n",
         r"^x\.toml: faults: expected an array of tables \[\[faults\]\], got 3$"),
        (MINIMAL + "[invariants]\np99_ms = 0\n",
         r"^x\.toml: invariants\.p99_ms: expected a number of milliseconds > 0, got 0$"),
        (MINIMAL + "[invariants]\nmin_delivered = 0\n",
         r"^x\.toml: invariants\.min_delivered: expected an integer >= 1, got 0$"),
    ],
)
def test_value_errors(text: str, expected: str) -> None:
    assert re.search(expected, error(text)), error(text)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("at_s = 1", r"faults\[0\]\.kind: missing; expected one of 'kill_node', "),
        ("kind = 'kill_node'", r"faults\[0\]\.at_s: missing; expected a number of seconds >= 0"),
        ("kind = 'explode'\nat_s = 1",
         r"faults\[0\]\.kind: expected one of 'kill_node', .*, got 'explode'$"),
        ("kind = 'kill_node'\nat_s = 1\nlatency_ms = 5",
         r"faults\[0\]\.latency_ms: unknown key for kind 'kill_node'; allowed: at_s, kind, "
         r"target, duration_s, restart, restart_after_s$"),
        ("kind = 'latency'\nat_s = 1\nlatncy_ms = 5",
         r"faults\[0\]\.latncy_ms: unknown key for kind 'latency' \(did you mean 'latency_ms'"),
        ("kind = 'kill_node'\nat_s = 1\nduration_s = 5",
         r"faults\[0\]\.duration_s: kill_node takes no duration_s; it heals at the restart"),
        ("kind = 'latency'\nat_s = 1\nduration_s = 0",
         r"faults\[0\]\.duration_s: expected a number of seconds > 0, got 0$"),
        ("kind = 'latency'\nat_s = 1\ntarget = 'node-1'",
         r"faults\[0\]\.target: expected a target 'clients', 'redis', 'clients->lb', "
         r"'lb->node-<n>' or 'node-<n>->redis', got 'node-1'$"),
        ("kind = 'kill_node'\nat_s = 1\ntarget = 'node-one'",
         r"faults\[0\]\.target: expected a target 'node-<n>', 'random' or 'all', got 'node-one'"),
        ("kind = 'partition_redis'\nat_s = 1\ntarget = 'lb->node-1'",
         r"faults\[0\]\.target: expected a target 'redis' or 'node-<n>->redis'"),
        ("kind = 'partition_redis'\nat_s = 1\nmode = 'drop'",
         r"faults\[0\]\.mode: expected one of 'blackhole', 'cut', got 'drop'$"),
        ("kind = 'latency'\nat_s = 1\ndirection = 'sideways'",
         r"faults\[0\]\.direction: expected one of 'upstream', 'downstream', 'both'"),
        ("kind = 'slow_consumers'\nat_s = 1\nshare = 1.5",
         r"faults\[0\]\.share: expected a fraction between 0 and 1, got 1\.5$"),
        ("kind = 'slow_consumers'\nat_s = 1\nshare = 0",
         r"faults\[0\]\.share: expected a fraction between 0 and 1, got 0$"),
        ("kind = 'connection_storm'\nat_s = 1\nclients = -5",
         r"faults\[0\]\.clients: expected an integer number of connections >= 1, got -5$"),
        ("kind = 'slicer'\nat_s = 1\naverage_size = 10\nsize_variation = 10",
         r"faults\[0\]\.size_variation: expected an integer number of bytes below average_size"),
        ("kind = 'kill_node'\nat_s = 31",
         r"faults\[0\]\.at_s: expected a number of seconds within the faults phase "
         r"\(0 \.\. phases\.faults_s = 30\), got 31$"),
    ],
)
def test_fault_errors(fault: str, expected: str) -> None:
    msg = error(MINIMAL + "[[faults]]\n" + fault + "\n")
    assert msg.startswith("x.toml: faults[0].")
    assert re.search(expected, msg), msg


def test_fault_must_be_a_table() -> None:
    assert error(MINIMAL + "faults = [1]\n") == (
        "x.toml: faults[0]: expected a table [[faults]], got 1"
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[clients]\ncount = 2\nprocesses = 3\n",
         "clients.processes: expected at most clients.count (2) processes, got 3"),
        ("[clients]\nchannels_per_client = 5\n",
         "clients.channels_per_client: expected at most workload.channels (4), got 5"),
        ("[clients]\nreconnect_backoff_min_s = 2\nreconnect_backoff_max_s = 1\n",
         "clients.reconnect_backoff_max_s: expected a number of seconds >= "
         "reconnect_backoff_min_s (2), got 1"),
        ("[workload]\npublish_interval_s = 1\ninterval_jitter_s = 1\n",
         "workload.interval_jitter_s: expected a number of seconds below publish_interval_s "
         "(1), got 1"),
        ("[cluster]\nhistory_ttl_s = 45\n",
         "cluster.history_ttl_s: expected a number of seconds above phases.faults_s + heal_s + "
         "settle_s (45) so that recovery stays possible, got 45"),
        ("[cluster]\nhistory_size = 22\n",
         "cluster.history_size: expected an integer >= 23 (the most updates one channel can get "
         "in the faults, heal and settle phases), got 22"),
        ("[phases]\nfaults_s = 0\n[[faults]]\nkind = 'kill_node'\nat_s = 0\n",
         "phases.faults_s: expected a number of seconds > 0 when there are faults, got 0"),
        ("[cluster]\nbalancer = 'kernel'\nserver = 'sockudo'\n",
         "cluster.balancer: expected 'haproxy' with server 'sockudo' (only turnout nodes share "
         "a port), got 'kernel'"),
        ("[cluster]\nbalancer = 'kernel'\n[[faults]]\nkind = 'latency'\nat_s = 1\n"
         "target = 'lb[0]->node-1'\n",
         "faults[0].target: expected a link the kernel balancer has (it has no lb->node links: "
         "cluster.balancer = 'kernel'), got 'lb[0]->node-1'"),
        ("[cluster]\nclient_link_faults = 'netfilter'\n[[faults]]\nkind = 'bandwidth'\n"
         "at_s = 1\ntarget = 'clients->lb[1]'\n",
         "faults[0].kind: expected latency on 'clients->lb[1]' (client links have no Toxiproxy "
         "with cluster.client_link_faults = 'netfilter'), got 'bandwidth'"),
        ("[cluster]\nclient_link_faults = 'netfilter'\nbalancer = 'kernel'\n"
         "[[client_groups]]\nkind = 'pusher-js'\n"
         "[[faults]]\nkind = 'latency'\nat_s = 1\ntarget = 'clients'\n",
         "faults[0].target: expected no client link with [[client_groups]] under the kernel "
         "balancer and client_link_faults = 'netfilter' (real clients connect from 127.0.0.1, "
         "so no lane's rule can pick them out), got 'clients'"),
        ("[cluster]\nclient_link_faults = 'netfilter'\nproxies = 'all'\n",
         "cluster.proxies: expected 'auto' with client_link_faults = 'netfilter' (no Toxiproxy "
         "on client links), got 'all'"),
    ],
)
def test_cross_field_errors(extra: str, expected: str) -> None:
    assert error(MINIMAL + extra) == f"x.toml: {expected}"


def test_the_kernel_balancer_keeps_client_link_faults() -> None:
    exp = parse(MINIMAL + "[cluster]\nbalancer = 'kernel'\n[[faults]]\nkind = 'latency'\n"
                "at_s = 1\ntarget = 'clients->lb[0]'\n")
    assert exp.cluster.balancer == "kernel"
    assert "cluster.balancer: expected" in error(MINIMAL + "[cluster]\nbalancer = 'nginx'\n")


def test_netfilter_client_links_take_latency_there_and_any_fault_elsewhere() -> None:
    exp = parse(MINIMAL + "[cluster]\nclient_link_faults = 'netfilter'\n"
                "[[faults]]\nkind = 'latency'\nat_s = 1\ntarget = 'clients'\n"
                "[[faults]]\nkind = 'bandwidth'\nat_s = 2\ntarget = 'node-1->redis'\n"
                "rate_kbps = 10\n")
    assert exp.cluster.client_link_faults == "netfilter"
    assert [f.kind for f in exp.faults] == ["latency", "bandwidth"]
    assert parse(MINIMAL).cluster.client_link_faults == "toxiproxy"
    full = load_experiment(shipped_experiments()["election-night-full"])
    assert full.cluster.client_link_faults == "netfilter"
    assert [f.kind for f in full.faults if f.target.startswith("clients")] == ["latency"]


def test_recovery_off_skips_the_retention_checks() -> None:
    exp = parse(MINIMAL + "[cluster]\nrecovery = false\nhistory_ttl_s = 1\nhistory_size = 1\n")
    assert exp.cluster.effective_history_size == 0


# -- docs ------------------------------------------------------------------------------------


def test_docs_reference_block_is_generated_from_the_schema() -> None:
    text = DOCS.read_text(encoding="utf-8")
    block = text[text.index(DOCS_BEGIN) + len(DOCS_BEGIN) : text.index(DOCS_END)]
    assert block.strip() == reference_markdown().strip(), (
        "docs/experiments.md is stale: run python -m harness.experiment --write-docs "
        "docs/experiments.md"
    )


def test_docs_mention_every_key_kind_experiment_and_definition() -> None:
    text = DOCS.read_text(encoding="utf-8")
    keys = [k for keys in SECTIONS.values() for k in keys] + list(FAULT_KEYS)
    keys += [k for kind in FAULT_KINDS.values() for k in kind.keys]
    for key in keys:
        assert f"`{key.name}`" in text, key.name
        assert key.unit, key.name  # the generated tables need both
        assert key.doc, key.name
    for kind in FAULT_KINDS:
        assert f"#### `{kind}`" in text
    for name in shipped_experiments():
        assert f"### {name}\n" in text, name
    for word in ("owed", "lost", "duplicated", "reordered", "unexpected", "indeterminate",
                 "latency", "recovery_s"):
        assert f"**{word}**" in text, word
    for code in ("| `pass` | 0 |", "| `fail` | 1 |", "| `error` | 2 |"):
        assert code in text


def test_presence_workload_its_limit_and_its_negative_control() -> None:
    exp = load_experiment(shipped_experiments()["presence"])
    assert exp.workload.presence_names == ("presence-room-1", "presence-room-2")
    assert (exp.invariants.presence, exp.invariants.max_presence) == (True, 0)
    assert {f.kind for f in exp.faults} == {"kill_node", "partition_redis", "rolling_restart"}
    neg = exp.presence_negative_control()
    assert (neg.cluster.reaper, exp.cluster.reaper) == (False, True)
    assert neg.cluster.recovery  # only the reaper is off: the updates must still all arrive
    # Without presence channels, presence is not judged.
    assert not load_experiment(shipped_experiments()["node-kill"]).invariants.presence
    text = ('description = "x"\n[clients]\ncount = 101\nchannels_per_client = 1\n'
            '[workload]\npresence_channels = 2\n')
    with pytest.raises(ExperimentError, match=r"workload.presence_channels.*at least 3"):
        parse_experiment(text, default_name="x")


def test_presence_clients_are_planned_half_stable_half_fresh() -> None:
    from harness.fleet import ClientSpec, FleetSpec
    from harness.fleet_control import plan_clients

    plan = plan_clients(4, ["a", "b"], 1, presence=("presence-room-1", "presence-room-2"))
    assert [(c.id, c.presence, c.fresh_user) for c in plan] == [
        (1, "presence-room-1", True), (2, "presence-room-2", False),
        (3, "presence-room-1", True), (4, "presence-room-2", False)]
    assert all(c.presence == "" for c in plan_clients(2, ["a"], 1))
    spec = FleetSpec(0, "h", ("ws://x/app/k?protocol=7",), clients=tuple(plan), app_key="k")
    assert FleetSpec.from_json(spec.to_json()) == spec
    assert ClientSpec.from_dict({"id": 1, "channels": ["a"]}) == ClientSpec(1, ("a",))
