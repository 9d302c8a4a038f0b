"""A child script spoken to in JSON lines from a trio test: the pusher-js scripts of tests/compat
and the fleets of clients/pusher-resume/tools.

The child is forked by harness.spawn from the trio thread, so it dies with the test
(``trio.lowlevel.open_process`` forks from a worker thread, whose idle exit would fire the death
signal), and its pipes are wrapped as trio streams. Its stderr goes to a log file, quoted by
``report()``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from harness.spawn import spawn

__all__ = ["LineScript", "start_script"]

Script = TypeVar("Script", bound="LineScript")


class LineScript:
    """One script process; ``records`` fills with the JSON lines it prints.

    ``fatal``: record types that fail any wait at once; ``context``: more text for reports
    (e.g. the nodes' logs).
    """

    def __init__(self, popen: subprocess.Popen[bytes], name: str, log_path: Path, *,
                 fatal: Sequence[str] = (), context: Callable[[], str] | None = None) -> None:
        assert popen.stdin is not None
        assert popen.stdout is not None
        self.popen = popen
        self.name = name
        self.log_path = log_path
        self.fatal = tuple(fatal)
        self.context = context
        self.records: list[dict[str, Any]] = []
        self._stdin = trio.lowlevel.FdStream(os.dup(popen.stdin.fileno()))
        self._stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
        popen.stdin.close()
        popen.stdout.close()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def read_stdout(self) -> None:
        buffer = b""
        async with self._stdout:
            async for chunk in self._stdout:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    if line.strip():
                        self.records.append(_record(line))

    async def send(self, command: dict[str, Any]) -> None:
        await self._stdin.send_all(json.dumps(command).encode() + b"\n")

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind
                and all(r.get(k) == v for k, v in match.items())]

    def report(self, *, skip: Sequence[str] = ("delivery",), last: int = 200) -> str:
        lines = [json.dumps(r) for r in self.records if r.get("type") not in skip]
        try:
            stderr = self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            stderr = ""
        return (f"{self.name} (exit {self.returncode}) printed:\n" + "\n".join(lines[-last:])
                + f"\n--- its stderr ---\n{stderr}\n" + (self.context() if self.context else ""))

    async def wait_for(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        """Until ``condition()``; fails the test on a fatal record, an exit or the timeout."""
        with trio.move_on_after(timeout):
            while not condition():
                failures = [r for kind in self.fatal for r in self.of(kind)]
                if failures:
                    pytest.fail(f"{self.name} reported {failures}\n{self.report()}")
                if self.returncode is not None:
                    await trio.sleep(0.2)  # let the reader drain the last lines
                    if condition():
                        return
                    pytest.fail(f"{self.name} exited before {what}\n{self.report()}")
                await trio.sleep(0.05)
            return
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.report()}")

    async def stop(self, grace: float = 10.0, *, farewell: dict[str, Any] | None = None) -> None:
        """Send ``farewell`` (if still running), close its stdin (the scripts end then), and
        SIGKILL it after ``grace`` seconds."""
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            if farewell is not None and self.returncode is None:
                await self.send(farewell)
            await self._stdin.aclose()
        with trio.move_on_after(grace):
            while self.returncode is None:
                await trio.sleep(0.05)
        if self.returncode is None:
            self.popen.kill()
            self.popen.wait(10)


def _record(line: bytes) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError:
        return {"type": "unparsed", "text": line.decode(errors="replace")}
    return record


def start_script(nursery: trio.Nursery, argv: Sequence[str], log_path: Path, *, name: str,
                 cwd: Path, env: Mapping[str, str] | None = None, fatal: Sequence[str] = (),
                 context: Callable[[], str] | None = None,
                 cls: type[Script] = LineScript) -> Script:  # type: ignore[assignment]
    """Start ``argv`` and read its stdout in ``nursery``; ``await script.stop()`` ends it."""
    script = cls(spawn(argv, log_path, pipes=True, env=env, cwd=cwd), name, log_path,
                 fatal=fatal, context=context)
    nursery.start_soon(script.read_stdout)
    return script
