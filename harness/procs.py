"""A trio supervisor for the child processes of one harness run.

Guarantees, in the order they kick in:

1. Explicit teardown: :func:`open_supervisor` stops every child on exit, error or cancel
   (SIGTERM to the child's process group, SIGKILL after a grace), shielded and bounded.
2. Process groups: every child leads its own group, so teardown also reaches grandchildren,
   and a Ctrl-C in the terminal (SIGINT to the foreground group) hits only the harness, which
   then tears down in order instead of every child dying at once.
3. ``PR_SET_PDEATHSIG=SIGKILL`` (harness.spawn): if the harness itself is SIGKILLed, the kernel
   kills the children.  The death signal fires when the *thread* that forked the child exits,
   which is why children are forked from the trio thread with a plain :class:`subprocess.Popen`:
   ``trio.lowlevel.open_process`` forks from a worker thread of trio's thread cache, and those
   threads exit after idling, which would SIGKILL perfectly healthy children seconds later.

Exits are observed with a pidfd (``os.pidfd_open`` + ``trio.lowlevel.wait_readable``), with a
short poll as fallback where pidfds do not exist.
"""

from __future__ import annotations

import enum
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import httpx
import psutil
import trio

from .spawn import spawn

__all__ = [
    "HarnessSetupError",
    "ManagedProcess",
    "ProcState",
    "ProcStats",
    "ProcessFailed",
    "ProcessSpec",
    "ReadinessTimeout",
    "ReadyCheck",
    "Supervisor",
    "cancel_on_signals",
    "find_binary",
    "http_ready",
    "open_supervisor",
    "read_lines",
    "serve_unix",
    "tcp_ready",
    "unix_listener",
]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
TOOLS_BIN: Final = REPO_ROOT / ".tools" / "bin"


class HarnessSetupError(RuntimeError):
    """Something the harness needs is missing (a binary, a port): the message says what."""


class ProcessFailed(RuntimeError):
    """A child exited (or never became ready) when it should be serving."""

    def __init__(self, message: str, *, name: str, returncode: int | None, log_tail: str) -> None:
        detail = f"\n--- last lines of {name}'s log ---\n{log_tail}" if log_tail else ""
        super().__init__(message + detail)
        self.name = name
        self.returncode = returncode
        self.log_tail = log_tail


class ReadinessTimeout(ProcessFailed):
    """A child stayed alive but did not pass its readiness check before the deadline."""


def find_binary(name: str, *, hint: str = "run scripts/setup.sh") -> str:
    """Locate an executable: ``TURNOUT_<NAME>_BIN`` if set, else ``<repo>/.tools/bin``, then
    PATH, then /usr/sbin.

    Raises:
        HarnessSetupError: naming the binary and how to get it.
    """
    variable = "TURNOUT_" + name.upper().replace("-", "_") + "_BIN"
    override = os.environ.get(variable)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise HarnessSetupError(f"{name} not found at {override} (set by {variable})")
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise HarnessSetupError(f"{name} not found: {hint}")
    return found


# --- readiness checks --------------------------------------------------------------------

ReadyCheck = Callable[[], Awaitable[bool]]
"""One readiness probe: returns True when the service is ready; must not hang (own timeout)."""

_PROBE_TIMEOUT: Final = 1.0


def tcp_ready(host: str, port: int) -> ReadyCheck:
    """Ready once a TCP connection to ``host:port`` is accepted."""

    async def probe() -> bool:
        with trio.move_on_after(_PROBE_TIMEOUT):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                return False
            await stream.aclose()
            return True
        return False

    return probe


def http_ready(url: str, *, status: int = 200) -> ReadyCheck:
    """Ready once ``GET url`` answers ``status``."""

    async def probe() -> bool:
        # trust_env=False: a proxy configured in the environment must never see loopback probes.
        async with httpx.AsyncClient(trust_env=False, timeout=_PROBE_TIMEOUT) as client:
            try:
                response = await client.get(url)
            except httpx.HTTPError:
                return False
            return response.status_code == status

    return probe


# --- processes ------------------------------------------------------------------------------


class ProcState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    EXITED = "exited"


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one child.

    ``env`` entries are added to (not substituted for) the harness's environment; ``None``
    values remove a variable.  ``ready`` is polled until True or ``ready_timeout`` seconds.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str | None] = field(default_factory=dict)
    cwd: Path | None = None
    ready: ReadyCheck | None = None
    ready_timeout: float = 30.0
    stop_grace: float = 5.0


@dataclass(frozen=True)
class ProcStats:
    name: str
    pid: int | None
    state: ProcState
    returncode: int | None
    starts: int
    rss_bytes: int | None
    num_fds: int | None
    log_path: Path


@final
class ManagedProcess:
    """One supervised child (across restarts).  Created by :meth:`Supervisor.start`."""

    def __init__(self, spec: ProcessSpec, supervisor: Supervisor) -> None:
        self.spec = spec
        self.name = spec.name
        self.log_path = supervisor.log_dir / f"{spec.name}.log"
        self._supervisor = supervisor
        self._popen: subprocess.Popen[bytes] | None = None
        self._exited = trio.Event()
        self._state = ProcState.STARTING
        self._returncode: int | None = None
        self._starts = 0
        self._psutil: psutil.Process | None = None

    # -- introspection
    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def state(self) -> ProcState:
        return self._state

    @property
    def returncode(self) -> int | None:
        """Exit status of the last incarnation (negative = killed by that signal)."""
        return self._returncode

    @property
    def alive(self) -> bool:
        return self._popen is not None and not self._exited.is_set()

    def statistics(self) -> ProcStats:
        rss = fds = None
        if self.alive and self._psutil is not None:
            with suppress(psutil.Error):
                with self._psutil.oneshot():
                    rss = self._psutil.memory_info().rss
                    fds = self._psutil.num_fds()
        return ProcStats(
            name=self.name,
            pid=self.pid,
            state=self._state,
            returncode=self._returncode,
            starts=self._starts,
            rss_bytes=rss,
            num_fds=fds,
            log_path=self.log_path,
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle
    async def wait(self) -> int:
        """Wait for the current incarnation to exit; return its exit status."""
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    async def stop(self, grace: float | None = None) -> int:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the status."""
        if not self.alive:
            return self._returncode if self._returncode is not None else 0
        grace = self.spec.stop_grace if grace is None else grace
        self._state = ProcState.STOPPING
        self._signal_group(signal.SIGTERM)
        # A stopped process only acts on SIGTERM once continued.
        self._signal_group(signal.SIGCONT)
        with trio.move_on_after(grace):
            return await self.wait()
        return await self.kill()

    async def kill(self) -> int:
        """SIGKILL the process group; return the status."""
        if self.alive:
            self._signal_group(signal.SIGKILL)
        # SIGKILL cannot be ignored; the deadline only guards against a kernel-level hang.
        with trio.fail_after(10):
            return await self.wait()

    def pause(self) -> None:
        """SIGSTOP the process group (a frozen, unresponsive process, like a GC pause)."""
        if self.alive:
            self._signal_group(signal.SIGSTOP)
            self._state = ProcState.PAUSED

    def resume(self) -> None:
        """SIGCONT the process group."""
        if self.alive:
            self._signal_group(signal.SIGCONT)
            if self._state is ProcState.PAUSED:
                self._state = ProcState.RUNNING

    async def restart(self, *, grace: float | None = None) -> None:
        """Stop (if running), start again with the same spec and wait until ready."""
        await self.stop(grace)
        await self._supervisor._launch(self)

    # -- internals
    def _signal_group(self, sig: int) -> None:
        if self._popen is None or self._exited.is_set():
            return
        # The leader is only reaped by _watch, after _exited is set, so its pid (== pgid) cannot
        # have been reused here.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def _spawn(self) -> None:
        env = dict(os.environ)
        for key, value in self.spec.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._starts += 1
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {stamp} start #{self._starts}: {list(self.spec.argv)}\n".encode())
        try:
            popen = spawn(self.spec.argv, self.log_path, env=env, cwd=self.spec.cwd,
                          new_group=True)
        except (FileNotFoundError, PermissionError) as exc:
            raise HarnessSetupError(
                f"{self.spec.argv[0]} cannot be executed ({self.name}): {exc}"
            ) from exc
        self._popen = popen
        self._exited = trio.Event()
        self._returncode = None
        self._state = ProcState.STARTING
        try:
            self._psutil = psutil.Process(popen.pid)
        except psutil.Error:
            self._psutil = None

    async def _watch(self, popen: subprocess.Popen[bytes]) -> None:
        """Owns the exit of one incarnation: waits, kills stragglers in its group, reaps."""
        pidfd: int | None = None
        with suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(popen.pid)
        try:
            if pidfd is not None:
                await trio.lowlevel.wait_readable(pidfd)
            else:
                # No pidfd (old kernel / non-Linux): nothing to wait on but the clock.
                while popen.poll() is None:
                    await trio.sleep(0.05)
        finally:
            if pidfd is not None:
                trio.lowlevel.notify_closing(pidfd)
                os.close(pidfd)
            # Leader gone (or we are being torn down): nothing of its group may survive it.
            # The leader is a zombie until waited for, so the pgid still designates our group.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            if popen.poll() is None:
                # Only reachable when cancelled mid-wait: the SIGKILL above lands promptly.
                with suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=5)
            self._returncode = popen.returncode
            self._state = ProcState.EXITED
            self._exited.set()


@final
class Supervisor:
    """Starts children and guarantees their teardown.  Use :func:`open_supervisor`."""

    def __init__(self, log_dir: Path, nursery: trio.Nursery, *, teardown_grace: float) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.teardown_grace = teardown_grace
        self._nursery = nursery
        self._procs: dict[str, ManagedProcess] = {}
        self._closed = False

    @property
    def processes(self) -> Mapping[str, ManagedProcess]:
        return dict(self._procs)

    @property
    def closing(self) -> bool:
        """True once teardown began: children exiting now were stopped on purpose."""
        return self._closed

    async def start(self, spec: ProcessSpec) -> ManagedProcess:
        """Start a child and wait until its readiness check passes.

        Raises:
            ProcessFailed: it exited before being ready.
            ReadinessTimeout: it was not ready within ``spec.ready_timeout`` (it is killed).
            HarnessSetupError: the executable does not exist.
        """
        if self._closed:
            raise RuntimeError("supervisor is closed")
        if spec.name in self._procs:
            raise ValueError(f"duplicate process name {spec.name!r}")
        proc = ManagedProcess(spec, self)
        self._procs[spec.name] = proc
        await self._launch(proc)
        return proc

    async def _launch(self, proc: ManagedProcess) -> None:
        if self._closed:
            raise RuntimeError(f"supervisor is closed; cannot start {proc.name}")
        proc._spawn()
        assert proc._popen is not None
        self._nursery.start_soon(proc._watch, proc._popen, name=f"watch {proc.name}")
        try:
            await self._wait_ready(proc)
        except BaseException:
            with trio.CancelScope(shield=True):
                await proc.kill()
            raise
        proc._state = ProcState.RUNNING

    async def _wait_ready(self, proc: ManagedProcess) -> None:
        spec = proc.spec
        deadline = trio.current_time() + spec.ready_timeout
        delay = 0.02
        while True:
            if not proc.alive:
                await proc.wait()
                raise ProcessFailed(
                    f"{proc.name} exited with status {proc.returncode} before becoming ready",
                    name=proc.name,
                    returncode=proc.returncode,
                    log_tail=proc.log_tail(),
                )
            if spec.ready is None:
                return
            with trio.move_on_at(deadline):
                # Still alive after a passing probe: otherwise the probe may have reached
                # someone else's listener on a port our child failed to bind.
                if await spec.ready() and proc.alive:
                    return
            if trio.current_time() >= deadline:
                raise ReadinessTimeout(
                    f"{proc.name} not ready after {spec.ready_timeout:g}s",
                    name=proc.name,
                    returncode=None,
                    log_tail=proc.log_tail(),
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def aclose(self) -> None:
        """Stop every child: SIGTERM all at once, SIGKILL what is left after the grace."""
        self._closed = True
        live = [p for p in self._procs.values() if p.alive]
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for proc in live:
                    nursery.start_soon(proc.stop, min(self.teardown_grace, proc.spec.stop_grace))
        self.kill_all_now()

    def kill_all_now(self) -> None:
        """Synchronous last resort: SIGKILL every child's group, no waiting."""
        for proc in self._procs.values():
            proc._signal_group(signal.SIGKILL)


@asynccontextmanager
async def open_supervisor(
    log_dir: Path, *, teardown_grace: float = 3.0
) -> AsyncIterator[Supervisor]:
    """A :class:`Supervisor` whose children are all stopped when the block exits, however."""
    try:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(log_dir, nursery, teardown_grace=teardown_grace)
            try:
                yield supervisor
            finally:
                try:
                    await supervisor.aclose()
                finally:
                    # Belt and braces if aclose itself was interrupted (e.g. KeyboardInterrupt).
                    supervisor.kill_all_now()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The watcher tasks never raise, so a group here only wraps what the body raised:
        # hand that back unwrapped so callers can `except ProcessFailed` (as trio-websocket
        # does for open_websocket under strict exception groups).
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def cancel_on_signals(
    scope: trio.CancelScope,
    *,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel ``scope`` when the harness receives one of ``signals``.

    By default SIGTERM kills a Python process without running ``finally`` blocks, which would
    leave teardown to pdeathsig alone (and not reach grandchildren).  Run this next to the run's
    work (``await nursery.start(cancel_on_signals, nursery.cancel_scope)``) so a SIGTERM tears
    down in order.  SIGINT (Ctrl-C) is taken the same way rather than as trio's
    KeyboardInterrupt, which can land between any two bytecodes of the teardown itself (a run
    interrupted so sometimes outlived the test's 60 s in CI).  Must run in the main thread (a
    trio restriction).
    """
    with trio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for _ in received:
            scope.cancel()
            return


# -- the Unix sockets a run's children (fleet workers, the publisher, real-client tools) and
# the TUI talk to the harness over
async def unix_listener(path: Path, backlog: int) -> trio.SocketListener:
    """A listening Unix socket at ``path`` (a file left by an earlier run is replaced)."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    await sock.bind(str(path))
    sock.listen(backlog)
    return trio.SocketListener(sock)


async def serve_unix(path: Path, handler: Callable[[trio.SocketStream], Awaitable[Any]], *,
                     backlog: int = 64,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept connections on ``path`` until cancelled, each served by ``handler`` in its own
    task; started once listening."""
    async with trio.open_nursery() as nursery, await unix_listener(path, backlog) as listener:
        task_status.started()
        while True:
            stream = await listener.accept()
            nursery.start_soon(handler, stream)


async def read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    """The newline-terminated lines of ``stream`` (without the newline) until the peer closes
    it or it breaks; a last line without its newline is dropped."""
    buffer = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        *lines, buffer = (buffer + data).split(b"\n")
        for line in lines:
            yield line
