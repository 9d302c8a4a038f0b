"""The nemesis's bookkeeping and the control socket's checks, with stand-in faults on trio's
autojump clock (the real faults against a real cluster: test_interactive_faults.py).

The stand-in replaces a kind's registered fault class for one test: its inject and heal only
note the time, so what is tested is when the nemesis heals and when it reports being idle."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from harness.control_server import handle_command
from harness.events import EventLog
from harness.faults import FaultContext, FaultError
from harness.faults.base import FAULTS, FaultKind
from harness.history import HistoryWriter
from harness.nemesis import Nemesis

NODES = ("node-1", "node-2", "node-3")
LINKS = ("clients->lb[0]", *(f"lb[0]->{n}" for n in NODES), *(f"{n}->redis" for n in NODES))


class StandIn(FaultKind):
    needs_cluster = False
    log: list[tuple[str, str, float]] = []

    async def inject(self, ctx: FaultContext) -> None:
        StandIn.log.append(("inject", self.target, trio.current_time()))

    async def heal(self, ctx: FaultContext) -> None:
        StandIn.log.append(("heal", self.target, trio.current_time()))


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float]]:
    StandIn.log = []
    for kind in ("latency", "kill_node", "pause_node"):
        # the real kind's declaration (parameters, duration), a stand-in's inject and heal
        monkeypatch.setitem(FAULTS, kind, type(f"StandIn_{kind}", (StandIn, FAULTS[kind]), {}))
    return StandIn.log


def make(tmp_path: Path, nursery: trio.Nursery, *, cluster: bool = False
         ) -> tuple[Nemesis, EventLog]:
    events = EventLog(tmp_path / "events.jsonl")
    history = HistoryWriter(tmp_path / "history.jsonl")
    topology: Any = None
    if cluster:
        topology = SimpleNamespace(nodes=dict.fromkeys(NODES), proxies=dict.fromkeys(LINKS),
                                   delay_links={}, link_names=tuple(LINKS))
    ctx = FaultContext(topology=topology, rng=random.Random(1))
    return Nemesis(ctx, history, events, nursery), events


def read_events(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


async def test_wait_idle_wakes_when_faults_overlap(tmp_path: Path, autojump_clock: Any,
                                                   stand_ins: list[Any]) -> None:
    """The 180 s hang: a second fault started while wait_idle() waited replaced the event it
    was waiting on, and nobody ever set the old one."""
    async with trio.open_nursery() as nursery:
        nemesis, _ = make(tmp_path, nursery)
        start = trio.current_time()
        nemesis.start("", "latency", "clients", {}, 5.0, source="interactive")
        done = trio.Event()

        async def waiter() -> None:
            await nemesis.wait_idle()
            done.set()

        nursery.start_soon(waiter)
        await trio.sleep(1)
        nemesis.start("", "latency", "clients->lb[0]", {}, 3.0, source="interactive")
        with trio.fail_after(30):
            await done.wait()
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
        assert nemesis.running == 0
        assert [entry[0] for entry in stand_ins] == ["inject", "inject", "heal", "heal"]


async def test_a_fault_started_after_idle_is_waited_for_too(tmp_path: Path, autojump_clock: Any,
                                                          stand_ins: list[Any]) -> None:
    async with trio.open_nursery() as nursery:
        nemesis, _ = make(tmp_path, nursery)
        nemesis.start("f1", "latency", "clients", {}, 1.0)
        await nemesis.wait_idle()
        nemesis.start("f2", "latency", "clients", {}, 2.0)
        start = trio.current_time()
        await nemesis.wait_idle()
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)


async def test_the_end_of_the_faults_phase_heals_faults_held_until_healed(
        tmp_path: Path, autojump_clock: Any, stand_ins: list[Any]) -> None:
    async with trio.open_nursery() as nursery:
        nemesis, _ = make(tmp_path, nursery)
        nemesis.start("f1", "latency", "clients", {}, 4.0)
        held = nemesis.start("", "latency", "clients->lb[0]", {}, None, source="interactive")
        await trio.sleep(0.5)
        start = trio.current_time()
        assert await nemesis.end_faults_phase(timeout_s=180)
        # the hand-made fault is healed at once; the run waits for f1's 4 s only
        assert trio.current_time() - start == pytest.approx(3.5, abs=0.01)
        heals = {target: t for what, target, t in stand_ins if what == "heal"}
        assert heals["clients->lb[0]"] == pytest.approx(start, abs=0.01)
        with pytest.raises(FaultError, match="faults phase is over"):
            nemesis.start("", "latency", "clients", {}, 1.0, source="interactive")
    events = read_events(tmp_path)
    [wait] = [e for e in events if e["type"] == "wait"]
    assert wait["timeout_s"] == 180
    assert {f["fault_id"]: f["due_in_s"] for f in wait["faults"]} == {"f1": 3.5, held: 0.0}
    assert "f1 (latency on clients, heals in 3.5 s)" in wait["waits_for"]
    [log] = [e for e in events if e["type"] == "log" and held in e["message"]]
    assert "held until healed" in log["message"]
    fault = next(e for e in events if e["type"] == "fault" and e["fault_id"] == held)
    assert fault["until_healed"] is True
    assert fault["hold_s"] is None
    assert fault["duration_s"] is None


async def test_the_end_of_the_faults_phase_gives_up_after_its_timeout(
        tmp_path: Path, autojump_clock: Any, stand_ins: list[Any]) -> None:
    async with trio.open_nursery() as nursery:
        nemesis, _ = make(tmp_path, nursery)
        nemesis.start("f1", "latency", "clients", {}, 500.0)
        await trio.sleep(0.1)
        start = trio.current_time()
        assert not await nemesis.end_faults_phase(timeout_s=20)
        assert trio.current_time() - start == pytest.approx(20.0, abs=0.01)
        nemesis.heal_all()
        await nemesis.wait_idle()
    assert any(e["type"] == "log" and "did not finish within 20 s" in e["message"]
               for e in read_events(tmp_path))


async def test_fault_events_carry_the_duration_asked(tmp_path: Path, autojump_clock: Any,
                                                     stand_ins: list[Any]) -> None:
    async with trio.open_nursery() as nursery:
        nemesis, _ = make(tmp_path, nursery)
        nemesis.start("", "latency", "clients", {}, 10.0, source="interactive")
        await nemesis.wait_idle()
    start, fault, heal = [e for e in read_events(tmp_path)
                          if e["type"] in ("fault_start", "fault", "heal")]
    assert start["duration_s"] == fault["duration_s"] == 10.0
    assert fault["hold_s"] == 10.0
    assert heal["by_request"] is False


# ------------------------------------------------------------------------------------------
# The control socket's checks: a typed fault never changes meaning.


def inject(nemesis: Nemesis, events: EventLog, **command: Any) -> dict[str, Any]:
    return handle_command(nemesis, events, {"cmd": "inject", **command})


@pytest.mark.parametrize(("command", "error"), [
    ({"kind": "kill_node", "target": "node-9"},
     "no node-9 in this cluster; its nodes are node-1, node-2, node-3"),
    ({"kind": "latency", "target": "node-2", "params": {"latency_ms": 300}},
     "latency acts on links: node-2's are lb[0]->node-2 and node-2->redis"),
    ({"kind": "latency", "target": "clients", "params": {"latency_ms": -5}},
     "latency_ms: expected a number of milliseconds >= 0, got -5"),
    ({"kind": "slow_consumers", "params": {"share": 1.5}},
     "share: expected a fraction between 0 and 1, got 1.5"),
    ({"kind": "latency", "params": {"latncy_ms": 5}}, "did you mean 'latency_ms'"),
    ({"kind": "kill_node", "target": "node-1", "duration_s": 10},
     "kill_node takes no duration_s"),
    ({"kind": "pause_node", "target": "node-1", "duration_s": -1},
     "duration_s: expected a number of seconds > 0"),
    ({"kind": "kil_node"}, "unknown fault kind 'kil_node' (did you mean 'kill_node'?)"),
    ({"kind": "partition_redis", "target": "node-7->redis"}, "no node-7 in this cluster"),
    ({"kind": "latency", "target": "clients->lb[3]"}, "no load-balancer lane lb[3]"),
])
async def test_the_control_socket_refuses_what_the_schema_or_the_cluster_refuses(
        tmp_path: Path, nursery: trio.Nursery, stand_ins: list[Any],
        command: dict[str, Any], error: str) -> None:
    nemesis, events = make(tmp_path, nursery, cluster=True)
    reply = inject(nemesis, events, **command)
    assert reply["ok"] is False
    assert error in reply["error"]
    assert nemesis.running == 0


async def test_the_control_socket_answers_with_what_will_run(
        tmp_path: Path, nursery: trio.Nursery, stand_ins: list[Any]) -> None:
    nemesis, events = make(tmp_path, nursery, cluster=True)
    reply = inject(nemesis, events, kind="latency", target="node-2->redis",
                   params={"latency_ms": 300})
    assert reply == {"ok": True, "fault_id": "i1", "target": "node-2->redis",
                     "params": {"latency_ms": 300, "jitter_ms": 0.0, "direction": "both"},
                     "duration_s": 10.0}
    reply = inject(nemesis, events, kind="pause_node", target="node-3", duration_s=None)
    assert reply["ok"]
    assert reply["duration_s"] is None
    assert nemesis.running == 2
    nemesis.closed = "the faults phase is over: this run takes no more faults"
    assert inject(nemesis, events, kind="kill_node", target="node-1") == {
        "ok": False, "error": "the faults phase is over: this run takes no more faults"}
    nemesis.heal_all()


async def test_an_inject_that_runs_out_of_time_says_so(tmp_path: Path, autojump_clock: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """trio's TooSlowError has no text: a slow inject ("rolling_restart on all failed: ") must
    say what happened, in the history and the event."""

    class Slow(StandIn, FAULTS["kill_node"]):  # type: ignore[misc, valid-type]
        async def inject(self, ctx: FaultContext) -> None:
            await trio.sleep(1000)

    monkeypatch.setitem(FAULTS, "kill_node", Slow)
    async with trio.open_nursery() as nursery:
        nemesis, events = make(tmp_path, nursery)
        nemesis.start("f1", "kill_node", "node-1", {}, None)
        await nemesis.wait_idle()
    events.close()
    nemesis.history.close()
    ops = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    failed = next(op for op in ops if op["f"] == "fault" and "error" in op["value"])
    assert failed["value"]["error"] == "its inject did not finish within 120 s"
    errors = [e for e in read_events(tmp_path) if e["type"] == "fault_error"]
    assert errors[0]["error"] == "its inject did not finish within 120 s"


async def test_a_failed_heal_is_a_failed_op_the_checker_judges(
        tmp_path: Path, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the checker decides the verdict: a heal that raises is recorded as a ``fail``
    heal op (not an ``ok`` one plus a note kept by the harness), so judging the history alone
    fails the run, the same live and in ``turnout check``."""
    from harness.checker import check_files
    from harness.history import NEMESIS

    class StuckHeal(StandIn, FAULTS["latency"]):  # type: ignore[misc, valid-type]
        async def heal(self, ctx: FaultContext) -> None:
            raise FaultError("toxiproxy refused to remove the toxic")

    monkeypatch.setitem(FAULTS, "latency", StuckHeal)
    async with trio.open_nursery() as nursery:
        events = EventLog(tmp_path / "events.jsonl")
        history = HistoryWriter(tmp_path / "history.jsonl")
        nemesis = Nemesis(FaultContext(topology=None, rng=random.Random(1)), history, events,
                          nursery)
        nemesis.start("f1", "latency", "clients", {}, 1.0)
        await nemesis.wait_idle()
        history.close()
    ops = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    heal = next(op for op in ops if op["f"] == "heal")
    assert (heal["process"], heal["type"]) == (NEMESIS, "fail")
    assert "refused to remove" in heal["value"]["error"]
    report = check_files([tmp_path / "history.jsonl"])
    healed = next(r for r in report.invariants if r.name == "faults_healed")
    assert not healed.ok
    assert "f1 (latency clients) heal failed: toxiproxy refused" in healed.message
    assert report.verdict == "fail"
    assert report.faults[0].heal_error == "toxiproxy refused to remove the toxic"


def test_a_rolling_restart_may_take_its_nodes_time() -> None:
    """A 6-node rolling restart (drain, restart, the balancer's check, interval_s each) is not
    cut off by the flat limit of one fault's inject."""
    ctx = FaultContext(topology=SimpleNamespace(nodes={f"node-{i}": None for i in range(1, 7)},
                                                proxies={}), rng=random.Random(1))
    ctx.nodes = lambda kind, target: list(range(6))  # type: ignore[method-assign]
    rolling = FAULTS["rolling_restart"]("all", {"interval_s": 10}, None)
    assert rolling.inject_limit_s(ctx) == 6 * 130.0
    assert FAULTS["kill_node"]("node-1", {}, None).inject_limit_s(ctx) == 120.0
