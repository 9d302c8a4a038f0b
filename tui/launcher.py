"""Starting a run from the TUI: ``python -m harness run FILE --out DIR`` as a child process.

The TUI does not run the harness in its own process (the harness is trio, the TUI asyncio):
it starts the same command a headless run uses, so the run folder is the same, and then tails
the folder like any other run. The child's console output goes to ``DIR/logs/turnout-run.log``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from harness.spawn import die_with_parent

__all__ = ["HarnessProcess"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class HarnessProcess:
    def __init__(self, experiment_file: Path, run_dir: Path,
                 process: asyncio.subprocess.Process) -> None:
        self.experiment_file = experiment_file
        self.run_dir = run_dir
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    @classmethod
    async def start(cls, experiment_file: Path, run_dir: Path,
                    *extra_args: str) -> HarnessProcess:
        run_dir = run_dir.resolve()
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("COLUMNS", "100")
        with open(run_dir / "logs" / "turnout-run.log", "ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "harness", "run", str(experiment_file.resolve()),
                "--out", str(run_dir), *extra_args,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                # Its own session: keys and signals meant for the TUI do not reach it;
                # stop() sends SIGTERM, which the harness turns into an orderly teardown,
                # and so does the kernel if the TUI dies first.
                start_new_session=True, env=env,
                # SIGTERM when the TUI dies, however (a closed terminal, a kill): the harness
                # then tears its cluster down in order instead of running on unwatched.
                preexec_fn=die_with_parent(signal.SIGTERM))
        return cls(experiment_file, run_dir, process)

    def terminate(self) -> None:
        """SIGTERM without waiting (the terminal is gone: the harness stops on its own)."""
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM (the harness tears the cluster down in order), then SIGKILL."""
        if self.process.returncode is not None:
            return self.process.returncode
        try:
            self.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return await self.process.wait()
        try:
            async with asyncio.timeout(grace_s):
                return await self.process.wait()
        except TimeoutError:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass
            return await self.process.wait()
