"""The TUI's side of a run's command channel: ``control.sock`` in the run folder.

One JSON object per line each way (harness/control_server.py has the commands). A command opens its
own connection with ``asyncio.open_unix_connection``: a run that restarts its channel, or a
TUI that attaches late, needs no reconnect logic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from .catalog import FaultRequest

__all__ = ["ControlClient", "ControlError"]


class ControlError(Exception):
    """The command could not be delivered, or the harness refused it (``str()`` says why)."""


class ControlClient:
    def __init__(self, path: Path, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    @property
    def available(self) -> bool:
        return self.path.exists()

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command; the reply when it says ``ok``, else ControlError."""
        if not self.path.exists():
            raise ControlError("the run has no control channel (yet): is it still setting up, "
                               "or already finished?")
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(self.path))
                try:
                    writer.write(json.dumps(command).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except OSError:
                        pass
        except TimeoutError:
            raise ControlError(f"no reply from {self.path.name} within {self.timeout_s:g} s")\
                from None
        except OSError as exc:
            raise ControlError(f"cannot reach {self.path.name}: {exc.strerror or exc}") from None
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlError(f"unreadable reply {line[:200]!r}") from None
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise ControlError(str(error or "refused"))
        return reply

    async def ping(self) -> bool:
        try:
            await self.request({"cmd": "ping"})
        except ControlError:
            return False
        return True

    async def inject(self, request: FaultRequest) -> str:
        """Inject a fault; returns its id (``i1``, ``i2``, ...)."""
        reply = await self.request(request.command())
        return str(reply.get("fault_id"))

    async def heal(self, fault_id: str) -> None:
        await self.request({"cmd": "heal", "fault_id": fault_id})

    async def heal_all(self) -> None:
        await self.request({"cmd": "heal_all"})

    async def faults(self) -> list[dict[str, Any]]:
        return list((await self.request({"cmd": "faults"})).get("active") or [])
