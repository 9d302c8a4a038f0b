"""The command channel of a running experiment: a Unix socket ``control.sock`` in the run folder.

Clients (the TUI, or ``socat``) send one JSON object per line and get one JSON reply per line:

- ``{"cmd": "inject", "kind": "kill_node", "target": "node-2", "params": {...},
  "duration_s": 10}`` → ``{"ok": true, "fault_id": "i1", "target": ..., "params": {...},
  "duration_s": ...}`` (what will run, defaults filled in). The request is checked by the
  experiment schema, as a ``[[faults]]`` entry of a file would be, and against the cluster's
  nodes and links (harness.fault_request): an unknown kind, key or target, or a value out of
  range, is refused with the reason, never replaced. No ``duration_s`` key: the kind's default;
  ``"duration_s": null``: held until healed, or until the faults phase ends. Interactive faults
  are recorded in the history like scheduled ones. Accepted during the steady and faults
  phases only.
- ``{"cmd": "heal", "fault_id": "i1"}``, ``{"cmd": "heal_all"}`` → ``{"ok": true}``
- ``{"cmd": "faults"}`` → ``{"ok": true, "accepting": true, "active": [...]}``
- ``{"cmd": "ping"}`` → ``{"ok": true}``

Errors answer ``{"ok": false, "error": "..."}`` and change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from .events import EventLog
from .experiment import FAULT_KINDS
from .fault_request import ClusterNames, FaultRequestError, check_fault
from .faults import FaultError
from .nemesis import Nemesis
from .procs import read_lines, serve_unix

__all__ = ["cluster_names", "handle_command", "serve_control"]


def cluster_names(nemesis: Nemesis) -> ClusterNames | None:
    """The nodes and links of the run's cluster (None against an external --target)."""
    topology = nemesis.ctx.topology
    if topology is None:
        return None
    return ClusterNames(tuple(topology.nodes), tuple(sorted(topology.link_names)))


def handle_command(nemesis: Nemesis, events: EventLog, command: Any) -> dict[str, Any]:
    if not isinstance(command, dict):
        return {"ok": False, "error": "a command must be a JSON object"}
    cmd = command.get("cmd")
    if cmd == "ping":
        return {"ok": True}
    if cmd == "faults":
        return {"ok": True, "accepting": nemesis.closed is None, "active": [
            {"fault_id": f.fault_id, "kind": f.kind, "target": f.target, "source": f.source}
            for f in nemesis.active.values()]}
    if cmd == "heal":
        healed = nemesis.heal(str(command.get("fault_id")))
        return {"ok": healed} if healed else {"ok": False, "error": "no such active fault"}
    if cmd == "heal_all":
        nemesis.heal_all()
        return {"ok": True}
    if cmd == "inject":
        if nemesis.closed is not None:
            return {"ok": False, "error": nemesis.closed}
        kind = command.get("kind")
        spec = FAULT_KINDS.get(kind) if isinstance(kind, str) else None
        # No duration_s key: the kind's default; an explicit null: held until healed.
        duration = command.get("duration_s", spec.duration_s if spec is not None else None)
        try:
            fault = check_fault(kind, command.get("target"), command.get("params"), duration,
                                cluster_names(nemesis))
            fault_id = nemesis.start("", fault.kind, fault.target, fault.params,
                                     fault.duration_s, source="interactive")
        except (FaultRequestError, FaultError) as exc:
            events.log(f"interactive fault refused: {exc}", level="warning")
            return {"ok": False, "error": str(exc)}
        events.log(f"interactive fault {fault_id}: {fault.kind} on {fault.target}")
        return {"ok": True, "fault_id": fault_id, "target": fault.target,
                "params": fault.params, "duration_s": fault.duration_s}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


async def _serve_one(stream: trio.SocketStream, nemesis: Nemesis, events: EventLog) -> None:
    async with stream:
        async for line in read_lines(stream):
            try:
                reply = handle_command(nemesis, events, json.loads(line))
            except json.JSONDecodeError as exc:
                reply = {"ok": False, "error": f"invalid JSON: {exc}"}
            try:
                await stream.send_all((json.dumps(reply) + "\n").encode())
            except trio.BrokenResourceError:
                return


async def serve_control(path: Path, nemesis: Nemesis, events: EventLog, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async def serve_one(stream: trio.SocketStream) -> None:
        await _serve_one(stream, nemesis, events)

    try:
        await serve_unix(path, serve_one, backlog=8, task_status=task_status)
    finally:
        path.unlink(missing_ok=True)
