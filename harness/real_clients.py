"""Real Pusher clients in a run: pusher-js in Node processes and pages in headless Chromium.

An experiment's ``[[client_groups]]`` (:class:`harness.experiment.ClientGroup`) add viewers
that are what election-night audiences run: pusher-js 8 (alone or under Laravel Echo 2), with
or without ``@turnout/pusher-resume``. They run in ``clients/pusher-resume/tools``:
``node-fleet.mjs`` (many pusher-js instances in one Node process) and ``browser-fleet.mjs``
(one Chromium page per viewer, Debian's /usr/bin/chromium driven by playwright-core). Each tool
process is started under the run's supervisor with the app secret in its environment
(``FLEET_APP_SECRET``, never in argv), connects back to the run's ``real-clients.sock`` and
speaks the JSON lines of ``tools/fleet-io.mjs`` over it.

What they report is translated into the history the checker already judges
(:class:`GroupRecord`): ``subscribe`` invoke/ok/fail, ``connect``/``disconnect``, one plain
``deliver`` op per update the application's handler saw (with the position when the plugin
reported one; without the plugin only the update id the publisher's payload carries, which the
checker judges against the publisher's records: lost and duplicated by id, reordered by the
publisher's ``seq``), ``gap`` for ``recovered: false`` and ``drain``
at the final read. Record times are CLOCK_MONOTONIC, stamped by the tool on receipt, the clock
of every other history file.

The final read (:meth:`RealClients.final_read`): once publishing has stopped, a viewer is done
when it is connected, every channel's latest subscribe (since that connection) succeeded and
nothing arrived for :data:`FINAL_QUIET_S`; then every tool is asked to ``flush`` (its answer
comes after every record it had), the ``drain`` ops are written, and the tools stop. A viewer
that never gets there has no ``drain`` op and fails the run as unfinished.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from .experiment import ClientGroup
from .history import HistoryWriter
from .procs import REPO_ROOT, HarnessSetupError, ProcessSpec, Supervisor, read_lines, serve_unix

log = logging.getLogger("turnout.real_clients")

__all__ = ["FINAL_QUIET_S", "GroupRecord", "RealClients", "ViewerPlan", "plan_group"]

PACKAGE_DIR: Final = REPO_ROOT / "clients" / "pusher-resume"
FINAL_QUIET_S: Final = 1.0
READY_TIMEOUT_S: Final = 90.0
FLUSH_TIMEOUT_S: Final = 30.0
TOOLS: Final = {"pusher-js": "node-fleet.mjs", "browser": "browser-fleet.mjs"}


@dataclass(frozen=True, slots=True)
class ViewerPlan:
    """One real viewer: its history process name and what the tool's ``open`` command says."""

    id: str
    process_index: int  # which of the group's tool processes runs it
    channels: tuple[str, ...]
    ws_host: str
    ws_port: int
    library: str  # "pusher-js" | "echo"
    version: str  # "newest" | "oldest"
    plugin: bool
    event: str = "result-update"  # the publisher's event name

    def command(self) -> dict[str, Any]:
        return {"op": "open", "viewer": {
            "id": self.id, "client": self.library, "pusher": self.version, "echo": self.version,
            "plugin": self.plugin, "channels": list(self.channels), "event": self.event,
            "wsHost": self.ws_host, "wsPort": self.ws_port}}


def plan_group(group: ClientGroup, channels: Sequence[str],
               entries: Sequence[tuple[str, int]], event: str = "result-update"
               ) -> list[ViewerPlan]:
    """The group's viewers: ``<name>-<i>``, channels round robin (viewer i starts at channel
    i), load-balancer lanes round robin, processes round robin, and for ``both`` the library
    and version alternating (so each half runs either)."""
    per = min(group.channels_per_client, len(channels))
    plans = []
    for i in range(group.count):
        library = group.library if group.library != "both" else ("pusher-js", "echo")[i % 2]
        version = group.versions if group.versions != "both" else (
            ("newest", "oldest")[(i // 2) % 2])
        host, port = entries[i % len(entries)]
        plans.append(ViewerPlan(
            id=f"{group.name}-{i}", process_index=i % group.processes,
            channels=tuple(channels[(i + k) % len(channels)] for k in range(per)),
            ws_host=host, ws_port=port, library=library, version=version,
            plugin=group.plugin, event=event))
    return plans


@dataclass
class _ViewerState:
    plan: ViewerPlan
    opened: bool = False
    connected: bool = False
    #: channels whose subscribe succeeded on the current connection
    subscribed: set[str] = field(default_factory=set)
    #: channels subscribed at least once (for the "subscribed" total)
    ever: set[str] = field(default_factory=set)
    last_heard: float = -math.inf
    delivered: int = 0
    reconnects: int = 0
    gaps: int = 0
    drained: bool = False


class GroupRecord:
    """The records of one tool process, as history ops (pure bookkeeping plus appends).

    The file's ops stay in time order (the merge relies on each file being ordered): a time
    earlier than the last one written, which only a harness-stamped op racing a tool-stamped
    record could give, is raised to it.
    """

    def __init__(self, history: HistoryWriter, viewers: Sequence[ViewerPlan]) -> None:
        self.history = history
        self.viewers = {v.id: _ViewerState(v) for v in viewers}
        self.last_time = -math.inf
        self.problems: list[str] = []
        self.flushed = 0

    def _op(self, process: str, type: str, f: str, value: dict[str, Any], t: float) -> None:
        t = max(t, self.last_time)
        self.last_time = t
        self.history.record(process, type, f, value, time=t)  # type: ignore[arg-type]

    def on_record(self, record: dict[str, Any], now: float) -> None:
        kind = record.get("type")
        t = float(record.get("t", now))
        if kind == "flushed":
            self.flushed += 1
            return
        viewer = self.viewers.get(str(record.get("client")))
        if viewer is None:
            if kind in ("fatal", "page_error"):
                self.problems.append(f"{kind}: {record.get('message')}"[:500])
            return
        if viewer.drained:
            return  # after its final read a viewer's history is closed
        process = viewer.plan.id
        if kind == "opened":
            viewer.opened = True
            for channel in viewer.plan.channels:
                self._op(process, "invoke", "subscribe", {"channel": channel}, t)
        elif kind == "delivery":
            viewer.delivered += 1
            viewer.last_heard = t
            value: dict[str, Any] = {"channel": record.get("channel"), "id": record.get("id")}
            offset = record.get("offset")
            if isinstance(offset, int) and not isinstance(offset, bool):
                value["offset"] = offset
                value["epoch"] = record.get("epoch") or ""
            self._op(process, "ok", "deliver", value, t)
        elif kind == "subscribed":
            channel = str(record.get("channel"))
            viewer.subscribed.add(channel)
            viewer.ever.add(channel)
            viewer.last_heard = t
            self._op(process, "ok", "subscribe", {"channel": channel}, t)
        elif kind == "subscription_error":
            self._op(process, "fail", "subscribe",
                     {"channel": record.get("channel"), "status": record.get("status")}, t)
        elif kind == "state":
            current = record.get("current")
            if current == "connected" and not viewer.connected:
                viewer.connected = True
                viewer.subscribed.clear()
                viewer.last_heard = t
                self._op(process, "ok", "connect", {}, t)
            elif current != "connected" and viewer.connected:
                viewer.connected = False
                viewer.subscribed.clear()
                viewer.reconnects += 1
                self._op(process, "info", "disconnect",
                         {"code": None, "reason": f"pusher-js state {current}"}, t)
        elif kind == "error":
            self._op(process, "info", "error", {"code": record.get("code")}, t)
        elif kind == "gap":
            viewer.gaps += 1
            self._op(process, "info", "gap", {"gap": record.get("gap")}, t)
        elif kind in ("fatal", "page_error"):
            self.problems.append(f"{process}: {kind}: {record.get('message')}"[:500])
            self._op(process, "info", "error", {"reason": str(record.get("message"))[:500]}, t)

    def read_complete(self, viewer: _ViewerState, now: float) -> bool:
        return (viewer.connected and viewer.subscribed >= set(viewer.plan.channels)
                and now - viewer.last_heard >= FINAL_QUIET_S)

    def pending(self, now: float) -> list[str]:
        """Viewers whose final read is not complete yet."""
        return [v.plan.id for v in self.viewers.values()
                if not v.drained and not self.read_complete(v, now)]

    def finish(self, now: float) -> list[str]:
        """Write ``drain`` for every viewer whose final read is complete; the others (returned)
        stay unfinished."""
        unfinished = []
        for viewer in self.viewers.values():
            if viewer.drained:
                continue
            if self.read_complete(viewer, now):
                viewer.drained = True
                self._op(viewer.plan.id, "ok", "drain",
                         {"channels": list(viewer.plan.channels)}, now)
            else:
                unfinished.append(viewer.plan.id)
        self.history.flush()
        return unfinished

    def totals(self) -> dict[str, int]:
        vs = self.viewers.values()
        return {"clients": len(self.viewers),
                "connected": sum(v.connected for v in vs),
                "subscribed": sum(len(v.ever) for v in vs),
                "delivered": sum(v.delivered for v in vs),
                "reconnects": sum(v.reconnects for v in vs),
                "gaps": sum(v.gaps for v in vs),
                "drained": sum(v.drained for v in vs)}


@dataclass
class _Tool:
    name: str  # supervisor process name, e.g. rc-pusher-js-p0
    group: ClientGroup
    viewers: list[ViewerPlan]
    record: GroupRecord
    stream: trio.SocketStream | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    gone: trio.Event = field(default_factory=trio.Event)
    send_lock: trio.Lock = field(default_factory=trio.Lock)


def _node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise HarnessSetupError("node (Node.js 18+) is not installed: client groups need it "
                                "(scripts/setup.sh installs it)")
    for path, what in [(PACKAGE_DIR / "node_modules" / "pusher-js", "its npm packages"),
                       (PACKAGE_DIR / "dist" / "esm" / "index.js", "its build")]:
        if not path.exists():
            raise HarnessSetupError(f"{path} is missing: run scripts/setup.sh (it installs "
                                    f"clients/pusher-resume's {what})")
    return node


class RealClients:
    """Every client group of a run: their tool processes, control socket and records."""

    def __init__(self, run_dir: Path, groups: Sequence[ClientGroup], channels: Sequence[str],
                 entries: Sequence[tuple[str, int]], *, app_key: str, app_secret: str,
                 event: str = "result-update") -> None:
        self.run_dir = run_dir
        self.socket_path = run_dir / "real-clients.sock"
        self.app_key = app_key
        self.app_secret = app_secret
        self.tools: dict[str, _Tool] = {}
        self._histories: list[HistoryWriter] = []
        for group in groups:
            plans = plan_group(group, channels, entries, event)
            for k in range(group.processes):
                name = f"rc-{group.name}-p{k}"
                history = HistoryWriter(run_dir / "parts" / f"history-{name}.jsonl")
                self._histories.append(history)
                mine = [p for p in plans if p.process_index == k]
                self.tools[name] = _Tool(name, group, mine, GroupRecord(history, mine))

    @property
    def viewer_count(self) -> int:
        return sum(len(t.viewers) for t in self.tools.values())

    def close(self) -> None:
        for history in self._histories:
            history.close()

    # ------------------------------------------------------------------ control socket
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept the tools' connections and read their records until cancelled; then close
        the history files (so they are complete before the run merges them)."""
        try:
            await serve_unix(self.socket_path, self._read_tool, task_status=task_status)
        finally:
            self.close()

    async def _read_tool(self, stream: trio.SocketStream) -> None:
        tool: _Tool | None = None
        async with stream:
            try:
                async for line in read_lines(stream):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("unparsable record from a client tool: %r", line[:200])
                        continue
                    if tool is None:
                        tool = self.tools.get(str(record.get("process")))
                        if tool is None:
                            log.warning("record from an unknown client tool: %r", record)
                            return
                        tool.stream = stream
                    if record.get("type") == "ready":
                        tool.ready.set()
                    tool.record.on_record(record, time.monotonic())
            finally:
                if tool is not None:
                    tool.gone.set()

    async def _send(self, tool: _Tool, command: dict[str, Any]) -> None:
        if tool.stream is None or tool.gone.is_set():
            raise RuntimeError(f"{tool.name} is not connected")
        async with tool.send_lock:
            await tool.stream.send_all(json.dumps(command).encode() + b"\n")

    # ------------------------------------------------------------------ lifecycle
    async def start(self, supervisor: Supervisor) -> None:
        """Start every tool process, wait until each is ready, then open its viewers at the
        group's rate."""
        if not self.tools:
            return
        node = _node_binary()
        async with trio.open_nursery() as nursery:
            for tool in self.tools.values():
                nursery.start_soon(self._start_one, supervisor, node, tool)

    async def _start_one(self, supervisor: Supervisor, node: str, tool: _Tool) -> None:
        settings = {"key": self.app_key, "wsHost": "127.0.0.1", "wsPort": 0,
                    "control": str(self.socket_path), "process": tool.name}
        await supervisor.start(ProcessSpec(
            name=tool.name,
            argv=[node, str(PACKAGE_DIR / "tools" / TOOLS[tool.group.kind]),
                  json.dumps(settings)],
            env={"FLEET_APP_SECRET": self.app_secret}, cwd=PACKAGE_DIR, ready=None,
            stop_grace=10.0))
        with trio.move_on_after(READY_TIMEOUT_S):
            await tool.ready.wait()
        if not tool.ready.is_set():
            raise TimeoutError(f"{tool.name} did not report ready within {READY_TIMEOUT_S:g} s "
                               f"(see logs/{tool.name}.log)")
        interval = 1.0 / tool.group.connect_rate_per_s * tool.group.processes
        for plan in tool.viewers:
            await self._send(tool, plan.command())
            await trio.sleep(interval)

    def _check_alive(self) -> None:
        for tool in self.tools.values():
            if tool.gone.is_set() and tool.ready.is_set():
                problems = "; ".join(tool.record.problems[-3:])
                raise RuntimeError(f"{tool.name} exited during the run (see logs/"
                                   f"{tool.name}.log){': ' + problems if problems else ''}")

    async def wait_subscribed(self, timeout: float) -> bool:
        """True once every viewer's every channel subscribed at least once."""
        expected = sum(len(v.channels) for t in self.tools.values() for v in t.viewers)
        with trio.move_on_after(timeout):
            while self.totals()["subscribed"] < expected:
                self._check_alive()
                await trio.sleep(0.2)
            return True
        return False

    async def final_read(self, timeout: float) -> list[str]:
        """The final read of every real viewer (module docstring); returns the viewers that did
        not complete it (they stay without a ``drain`` op)."""
        if not self.tools:
            return []
        live = [t for t in self.tools.values() if not t.gone.is_set()]
        with trio.move_on_after(timeout):
            while any(t.record.pending(time.monotonic()) for t in live):
                await trio.sleep(0.25)
        # Everything a tool reported before its "flushed" has been read: the last deliveries
        # are in the records before the drain ops are written.
        with trio.move_on_after(FLUSH_TIMEOUT_S):
            for tool in live:
                want = tool.record.flushed + 1
                await self._send(tool, {"op": "flush"})
                while tool.record.flushed < want and not tool.gone.is_set():
                    await trio.sleep(0.05)
        unfinished: list[str] = []
        now = time.monotonic()
        for tool in self.tools.values():
            unfinished += tool.record.finish(now)
        for tool in live:
            if not tool.gone.is_set():
                try:
                    await self._send(tool, {"op": "stop"})
                except (RuntimeError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return unfinished

    def totals(self) -> dict[str, int]:
        out = {"clients": 0, "connected": 0, "subscribed": 0, "delivered": 0, "reconnects": 0,
               "gaps": 0, "drained": 0}
        for tool in self.tools.values():
            for key, value in tool.record.totals().items():
                out[key] += value
        return out

    def totals_by_group(self) -> dict[str, dict[str, int]]:
        groups: dict[str, dict[str, int]] = {}
        for tool in self.tools.values():
            entry = groups.setdefault(tool.group.name, {})
            for key, value in tool.record.totals().items():
                entry[key] = entry.get(key, 0) + value
        return groups
