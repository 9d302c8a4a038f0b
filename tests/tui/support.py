"""Helpers for the TUI tests: screen text, waiting, a fake harness control socket."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot


def screen_text(app: App[Any]) -> str:
    """What the terminal shows, as plain text (the same render as a screenshot)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False,
                      safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text()


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], object], timeout: float = 10.0,
                   what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.05)


def unfinished_copy(recorded: Path, target: Path, until_t: float | None = None) -> Path:
    """A run folder holding a recorded run's events minus the verdict (and, with
    ``until_t``, minus every event after that time): a run in progress."""
    target.mkdir(parents=True)
    for name in ("experiment.toml", "experiment.json"):
        if (recorded / name).exists():  # a capacity trial has no experiment.toml
            shutil.copy(recorded / name, target / name)
    lines = (recorded / "events.jsonl").read_bytes().splitlines(keepends=True)
    (target / "events.jsonl").write_bytes(b"".join(
        line for line in lines if b'"type":"verdict"' not in line
        and (until_t is None or json.loads(line)["t"] <= until_t)))
    return target


class FakeHarness:
    """A control.sock answering like harness/control_server.py; records every command."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commands: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self._injected = 0

    async def __aenter__(self) -> FakeHarness:
        self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.path.unlink(missing_ok=True)

    def injected(self) -> list[dict[str, Any]]:
        return [c for c in self.commands if c.get("cmd") == "inject"]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command = json.loads(line)
            self.commands.append(command)
            reply: dict[str, Any] = {"ok": True}
            if command.get("cmd") == "inject":
                self._injected += 1
                reply["fault_id"] = f"i{self._injected}"
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()
