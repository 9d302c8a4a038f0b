"""Drive clients/pusher-resume/tools/{browser,node}-fleet.mjs from a trio test: start the
process, send it commands, collect its JSON-line records (protocol: tools/fleet-io.mjs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.support.procs import REPO

PACKAGE = REPO / "clients" / "pusher-resume"
NODE = shutil.which("node")


def require_package_built() -> None:
    """Fail (not skip: CI must run these) naming the setup step that is missing."""
    if NODE is None:
        pytest.fail("node (Node.js 18+) is not installed; scripts/setup.sh needs it")
    for path, what in [
        (PACKAGE / "node_modules" / "pusher-js", "npm packages of clients/pusher-resume"),
        (PACKAGE / "dist" / "esm" / "index.js", "the build of clients/pusher-resume"),
    ]:
        if not path.exists():
            pytest.fail(f"{path} is missing: run scripts/setup.sh (it installs {what})")


class Fleet:
    """One fleet process; ``records`` fills as it reports."""

    def __init__(self, proc: trio.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.records: list[dict[str, Any]] = []
        self.stderr = b""

    async def read_stdout(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        async for chunk in self.proc.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:
                        self.records.append({"type": "unparsed", "text": line.decode("replace")})

    async def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for chunk in self.proc.stderr:
            self.stderr = (self.stderr + chunk)[-20000:]

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(json.dumps(command).encode() + b"\n")

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind
                and all(r.get(k) == v for k, v in match.items())]

    def report(self) -> str:
        lines = [json.dumps(r) for r in self.records if r.get("type") != "delivery"]
        return (f"{self.name} (exit {self.proc.returncode}) non-delivery records:\n"
                + "\n".join(lines[-200:])
                + f"\n--- stderr ---\n{self.stderr.decode(errors='replace')[-6000:]}")

    async def wait_for(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not condition():
                fatal = self.of("fatal") + self.of("page_error")
                if fatal:
                    pytest.fail(f"{self.name} reported {fatal}\n{self.report()}")
                if self.proc.returncode is not None:
                    await trio.sleep(0.2)
                    if condition():
                        return
                    pytest.fail(f"{self.name} exited before {what}\n{self.report()}")
                await trio.sleep(0.05)
            return
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.report()}")

    async def stop(self, timeout: float = 30) -> None:
        if self.proc.returncode is None:
            await self.send({"op": "stop"})
            with trio.move_on_after(timeout):
                await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()


async def start_fleet(nursery: trio.Nursery, tool: str, *, key: str, secret: str,
                      ws_host: str, ws_port: int) -> Fleet:
    """Start tools/<tool>.mjs and wait for its ``ready`` record."""
    require_package_built()
    assert NODE is not None
    settings = json.dumps({"key": key, "wsHost": ws_host, "wsPort": ws_port})
    proc = await trio.lowlevel.open_process(
        [NODE, str(PACKAGE / "tools" / f"{tool}.mjs"), settings],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=PACKAGE, env={**os.environ, "FLEET_APP_SECRET": secret})
    # No PR_SET_PDEATHSIG: trio forks from a worker thread, and the signal fires when that
    # thread exits (idle), not the test. The fleet exits by itself when its stdin closes.
    fleet = Fleet(proc, tool)
    nursery.start_soon(fleet.read_stdout)
    nursery.start_soon(fleet.read_stderr)
    await fleet.wait_for(lambda: bool(fleet.of("ready")), f"{tool} to start", 90)
    return fleet
