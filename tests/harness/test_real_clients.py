"""Client groups: the schema, the plan, and the translation of the tools' records into the
history the checker judges (pure: records are built by hand as tools/fleet-io.mjs writes them).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import trio

from harness.checker import Invariants, check_files
from harness.experiment import ClientGroup, ExperimentError, parse_experiment
from harness.history import HistoryWriter, iter_history
from harness.procs import open_supervisor
from harness.real_clients import (
    FINAL_QUIET_S,
    GroupRecord,
    RealClients,
    ViewerPlan,
    plan_group,
)
from harness.render import render_markdown

BASE = 'name = "t"\ndescription = "x"\n[workload]\nchannels = 3\n'


def test_client_groups_parse_with_defaults_and_names() -> None:
    exp = parse_experiment(BASE + """
[[client_groups]]
kind = "pusher-js"
count = 40
processes = 2

[[client_groups]]
kind = "browser"
count = 3
library = "both"

[[client_groups]]
kind = "browser"
count = 2
plugin = false
""")
    names = [g.name for g in exp.client_groups]
    assert names == ["pusher-js", "browser-1", "browser-2"]
    first = exp.client_groups[0]
    assert (first.count, first.processes, first.plugin, first.library) == (40, 2, True,
                                                                           "pusher-js")
    off = exp.plugin_off()
    assert off.name.endswith("-plugin-off")
    assert [g.plugin for g in off.client_groups] == [False, False, False]
    assert off.clients == exp.clients  # the Python fleet keeps resuming
    assert exp.to_dict()["client_groups"][1]["library"] == "both"


@pytest.mark.parametrize(("entry", "key", "words"), [
    ('kind = "ie6"', "client_groups[0].kind", "one of"),
    ('kind = "browser"\ncount = 2\nprocesses = 3', "client_groups[0].processes", "at most"),
    ('kind = "browser"\nchannels_per_client = 4', "client_groups[0].channels_per_client",
     "workload.channels"),
    ('kind = "browser"\nname = "client-1"', "client_groups[0].name", "fleet"),
    ('kind = "browser"\nplugn = false', "client_groups[0].plugn", "did you mean 'plugin'"),
    ('count = 3', "client_groups[0].kind", "missing"),
])
def test_client_group_errors_name_the_key(entry: str, key: str, words: str) -> None:
    with pytest.raises(ExperimentError) as info:
        parse_experiment(BASE + "[[client_groups]]\n" + entry + "\n")
    assert info.value.key == key
    assert words in str(info.value)


def test_duplicate_group_names_are_refused() -> None:
    with pytest.raises(ExperimentError, match="no other group"):
        parse_experiment(BASE + '[[client_groups]]\nkind = "browser"\nname = "a"\n'
                         '[[client_groups]]\nkind = "pusher-js"\nname = "a"\n')


def test_plan_spreads_channels_lanes_processes_and_versions() -> None:
    group = ClientGroup(name="pjs", kind="pusher-js", count=6, processes=2, library="both",
                        versions="both", channels_per_client=2)
    plans = plan_group(group, ["a", "b", "c"], [("127.0.0.1", 7000), ("127.0.0.1", 7001)])
    assert [p.id for p in plans] == [f"pjs-{i}" for i in range(6)]
    assert plans[0].channels == ("a", "b")
    assert plans[2].channels == ("c", "a")
    assert [p.ws_port for p in plans] == [7000, 7001] * 3
    assert [p.process_index for p in plans] == [0, 1] * 3
    assert {(p.library, p.version) for p in plans} == {
        ("pusher-js", "newest"), ("echo", "newest"), ("pusher-js", "oldest"),
        ("echo", "oldest")}
    command = plans[1].command()
    assert command["op"] == "open"
    assert command["viewer"] == {"id": "pjs-1", "client": "echo", "pusher": "newest",
                                 "echo": "newest", "plugin": True, "channels": ["b", "c"],
                                 "event": "result-update",
                                 "wsHost": "127.0.0.1", "wsPort": 7001}


def _viewer(vid: str, plugin: bool) -> ViewerPlan:
    return ViewerPlan(vid, 0, ("results-1",), "127.0.0.1", 7000, "pusher-js", "newest", plugin)


def _publisher(path: Path, count: int, t0: float = 10.0) -> None:
    with HistoryWriter(path) as h:
        for n in range(1, count + 1):
            t = t0 + n
            value = {"id": f"p{n}", "channel": "results-1", "seq": n}
            h.record("publisher", "invoke", "publish", value, time=t)
            h.record("publisher", "ok", "publish", {**value, "offset": n, "epoch": "e1"},
                     time=t + 0.01)


def _records(client: str, received: list[int], positions: bool, *, reconnect_at: float
             ) -> list[dict[str, Any]]:
    """What a tool reports for one viewer: connected, subscribed at t=10.5 (before p1), the
    given updates (each 0.05 s after its publish), a disconnect and reconnect at
    ``reconnect_at``."""
    out: list[dict[str, Any]] = [
        {"type": "opened", "client": client, "t": 10.0},
        {"type": "state", "client": client, "previous": "connecting", "current": "connected",
         "t": 10.2},
        {"type": "subscribed", "client": client, "channel": "results-1", "t": 10.5},
    ]
    for n in received:
        t = 10.0 + n + 0.05
        if out[-1]["t"] < reconnect_at <= t:
            out += [
                {"type": "state", "client": client, "previous": "connected",
                 "current": "connecting", "t": reconnect_at},
                {"type": "state", "client": client, "previous": "connecting",
                 "current": "connected", "t": reconnect_at + 0.3},
                {"type": "subscribed", "client": client, "channel": "results-1",
                 "t": reconnect_at + 0.4},
            ]
        out.append({"type": "delivery", "client": client, "channel": "results-1",
                    "event": "update", "id": f"p{n}",
                    "offset": n if positions else None, "epoch": "e1" if positions else None,
                    "t": t})
    return out


def _translate(path: Path, viewers: list[ViewerPlan], records: list[dict[str, Any]],
               end: float) -> GroupRecord:
    with HistoryWriter(path) as history:
        group = GroupRecord(history, viewers)
        for record in records:
            group.on_record(record, record["t"])
        assert group.pending(end) == []
        assert group.finish(end) == []
    return group


def test_plugin_viewer_with_every_update_passes_and_is_recorded_with_positions(
        tmp_path: Path) -> None:
    _publisher(tmp_path / "pub.jsonl", 10)
    records = _records("pjs-0", list(range(1, 11)), True, reconnect_at=15.5)
    group = _translate(tmp_path / "rc.jsonl", [_viewer("pjs-0", True)], records, 30.0)
    assert group.totals()["reconnects"] == 1
    ops = list(iter_history(tmp_path / "rc.jsonl"))
    delivers = [op for op in ops if op.f == "deliver"]
    assert delivers[0].value == {"channel": "results-1", "id": "p1", "offset": 1, "epoch": "e1"}
    assert [op.f for op in ops][-1] == "drain"
    assert all(a.time <= b.time for a, b in itertools.pairwise(ops))
    report = check_files([tmp_path / "pub.jsonl", tmp_path / "rc.jsonl"], Invariants())
    assert report.verdict == "pass", report.violations
    assert report.totals["owed"] == report.totals["delivered"] == 10
    assert report.reconnects["total"] == 1


def test_plain_pusher_js_losing_updates_across_a_reconnect_is_reported_lost(
        tmp_path: Path) -> None:
    """Without the plugin deliveries carry no position: the checker judges them by id (the
    publisher's acknowledged positions say which update each is) and finds the hole."""
    _publisher(tmp_path / "pub.jsonl", 10)
    records = _records("plain-0", [1, 2, 3, 4, 7, 8, 9, 10], False, reconnect_at=15.5)
    _translate(tmp_path / "rc.jsonl", [_viewer("plain-0", False)], records, 30.0)
    report = check_files([tmp_path / "pub.jsonl", tmp_path / "rc.jsonl"], Invariants())
    assert report.verdict == "fail"
    assert report.totals["lost"] == 2
    (problems,) = report.clients
    assert problems.client == "plain-0"
    assert {ch: list(ids) for ch, ids in problems.lost_ids.items()} == {"results-1": ["p5", "p6"]}
    assert any(v.startswith("lost = 2") and "plain-0" in v for v in report.violations)


def test_duplicates_and_reorders_of_plain_pusher_js_are_found_by_id(tmp_path: Path) -> None:
    _publisher(tmp_path / "pub.jsonl", 6)
    records = _records("plain-0", [1, 2, 3, 3, 5, 4, 6], False, reconnect_at=99.0)
    _translate(tmp_path / "rc.jsonl", [_viewer("plain-0", False)], records, 30.0)
    report = check_files([tmp_path / "pub.jsonl", tmp_path / "rc.jsonl"], Invariants())
    assert (report.totals["duplicated"], report.totals["reordered"],
            report.totals["lost"]) == (1, 1, 0)


def test_final_read_waits_for_connection_subscription_and_quiet(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path / "rc.jsonl") as history:
        group = GroupRecord(history, [_viewer("v-0", True)])
        group.on_record({"type": "opened", "client": "v-0", "t": 1.0}, 1.0)
        assert group.pending(100.0) == ["v-0"]  # never connected
        group.on_record({"type": "state", "client": "v-0", "current": "connected", "t": 2.0},
                        2.0)
        assert group.pending(100.0) == ["v-0"]  # not subscribed
        group.on_record({"type": "subscribed", "client": "v-0", "channel": "results-1",
                         "t": 3.0}, 3.0)
        assert group.pending(3.0 + FINAL_QUIET_S / 2) == ["v-0"]  # not quiet yet
        assert group.pending(3.0 + FINAL_QUIET_S) == []
        group.on_record({"type": "state", "client": "v-0", "current": "unavailable",
                         "t": 5.0}, 5.0)
        assert group.pending(50.0) == ["v-0"]  # lost its connection again
        assert group.finish(50.0) == ["v-0"]
    ops = list(iter_history(tmp_path / "rc.jsonl"))
    assert "drain" not in [op.f for op in ops]  # an unfinished viewer fails the run


def test_records_after_the_drain_and_of_unknown_viewers_are_not_recorded(
        tmp_path: Path) -> None:
    with HistoryWriter(tmp_path / "rc.jsonl") as history:
        group = GroupRecord(history, [_viewer("v-0", True)])
        for record in _records("v-0", [1], True, reconnect_at=99.0):
            group.on_record(record, record["t"])
        assert group.finish(20.0) == []
        group.on_record({"type": "state", "client": "v-0", "current": "disconnected",
                         "t": 21.0}, 21.0)
        group.on_record({"type": "delivery", "client": "ghost", "channel": "results-1",
                         "id": "p1", "t": 21.0}, 21.0)
        group.on_record({"type": "fatal", "message": "chromium exited", "t": 22.0}, 22.0)
        group.on_record({"type": "flushed", "t": 22.0}, 22.0)
    ops = list(iter_history(tmp_path / "rc.jsonl"))
    assert ops[-1].f == "drain"
    assert {op.process for op in ops} == {"v-0"}
    assert group.problems == ["fatal: chromium exited"]
    assert group.flushed == 1


def test_a_harness_stamped_op_never_goes_back_in_time(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path / "rc.jsonl") as history:
        group = GroupRecord(history, [_viewer("v-0", True)])
        for record in _records("v-0", [1], True, reconnect_at=99.0):
            group.on_record(record, record["t"])
        # a record stamped later than the harness's clock reading at the drain
        group.on_record({"type": "error", "client": "v-0", "code": 4201, "t": 50.0}, 50.0)
        assert group.finish(20.0) == []
    ops = list(iter_history(tmp_path / "rc.jsonl"))
    assert ops[-1].f == "drain"
    assert ops[-1].time >= ops[-2].time


def test_the_report_says_which_group_lost(tmp_path: Path) -> None:
    """Fleet viewers (client-<n>) and real ones side by side: totals per group."""
    _publisher(tmp_path / "pub.jsonl", 10)
    records = (_records("pusher-js-0", [1, 2, 3, 4, 7, 8, 9, 10], False, reconnect_at=15.5)
               + _records("pusher-js-1", list(range(1, 11)), False, reconnect_at=99.0))
    _translate(tmp_path / "rc.jsonl", [_viewer("pusher-js-0", False),
                                       _viewer("pusher-js-1", False)], records, 30.0)
    _translate(tmp_path / "fleet.jsonl", [_viewer("client-1", True)],
               _records("client-1", list(range(1, 11)), True, reconnect_at=15.5), 30.0)
    report = check_files([tmp_path / "pub.jsonl", tmp_path / "rc.jsonl",
                          tmp_path / "fleet.jsonl"], Invariants())
    assert report.groups == {
        "fleet": {"clients": 1, "unfinished": 0, "lost": 0, "clients_losing": 0,
                  "duplicated": 0, "reordered": 0, "unexpected": 0},
        "pusher-js": {"clients": 2, "unfinished": 0, "lost": 2, "clients_losing": 1,
                      "duplicated": 0, "reordered": 0, "unexpected": 0},
    }
    assert list(report.to_dict()["groups"]) == ["fleet", "pusher-js"]
    assert "| pusher-js | 2 | 2 | 1 |" in render_markdown(report)


async def test_a_tool_speaks_over_the_control_socket_with_the_secret_only_in_its_environment(
        tmp_path: Path) -> None:
    """The harness side of a real client group against the real tools/node-fleet.mjs (no
    cluster: its viewers point at a closed port, so they never connect and never finish)."""
    (tmp_path / "parts").mkdir()
    secret = "s3cret-for-this-test"
    group = ClientGroup(name="pjs", kind="pusher-js", count=2, connect_rate_per_s=100)
    real = RealClients(tmp_path, [group], ["results-1"], [("127.0.0.1", 9)],
                       app_key="k", app_secret=secret)
    (tool,) = real.tools.values()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(real.serve)
            async with open_supervisor(tmp_path / "logs") as supervisor:
                await real.start(supervisor)
                proc = supervisor.processes["rc-pjs-p0"]
                assert secret.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
                assert f"FLEET_APP_SECRET={secret}".encode() in Path(
                    f"/proc/{proc.pid}/environ").read_bytes()
                while not all(v.opened for v in tool.record.viewers.values()):
                    await trio.sleep(0.05)
                assert await real.final_read(timeout=1.0) == ["pjs-0", "pjs-1"]
                assert tool.record.flushed == 1  # the tool answered the flush
                assert await proc.wait() == 0  # and exited by itself on stop
            nursery.cancel_scope.cancel()
    ops = list(iter_history(tmp_path / "parts" / "history-rc-pjs-p0.jsonl"))
    assert sorted((op.process, op.type, op.f) for op in ops if op.f == "subscribe") == [
        ("pjs-0", "invoke", "subscribe"), ("pjs-1", "invoke", "subscribe")]
    assert "drain" not in {op.f for op in ops}  # never connected: unfinished, not passed
