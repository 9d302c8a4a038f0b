"""Starting a child process that dies with its parent: the one place that sets the death signal.

The harness's supervisor (harness.procs), the TUI's launcher, the benchmarks and the tests all
fork their children through :func:`die_with_parent` (``spawn`` when a blocking
:class:`subprocess.Popen` will do). No trio and no asyncio here: the TUI imports this too.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process: fork
from a long-lived thread (trio's or asyncio's own), never from a worker of a thread pool
(``trio.lowlevel.open_process`` forks from one, and its idle exit would kill the child).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = ["die_with_parent", "spawn"]

_PR_SET_PDEATHSIG: Final = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    prctl = libc.prctl
    # Resolved and typed here, in the parent: the forked child must do as little as possible.
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def die_with_parent(sig: int = signal.SIGKILL, *,
                    nofile: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: the kernel sends ``sig`` to the child when its parent dies, however.

    SIGKILL for services; SIGTERM for a child that must tear down its own children in order
    (the TUI's harness run). ``nofile`` caps the child's open files (soft and hard).
    """
    parent_pid = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:  # the parent died before prctl ran: no signal will come
            os.kill(os.getpid(), sig)
            os._exit(126)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return preexec


def spawn(argv: Sequence[str], log_path: Path, *, pipes: bool = False,
          env: Mapping[str, str] | None = None, cwd: Path | None = None,
          nofile: int | None = None, new_group: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` (SIGKILLed when we die), appending its output to ``log_path``.

    ``pipes``: stdin and stdout are pipes (a child spoken to in lines), stderr still goes to the
    log. ``new_group``: the child leads its own process group (signals reach its children).
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=env, close_fds=True,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else log, stderr=log,
            process_group=0 if new_group else None,
            preexec_fn=die_with_parent(nofile=nofile),
        )
