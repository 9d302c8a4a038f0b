"""Free loopback port allocation for one harness run.

Why not just ``bind(("127.0.0.1", 0))``?  Port 0 hands out a port from the kernel's *ephemeral*
range (``/proc/sys/net/ipv4/ip_local_port_range``), the same range every outgoing connection
takes its local port from.  A chaos run opens tens of thousands of loopback connections, and
it restarts services on the *same* port (a killed node, a re-enabled Toxiproxy proxy).  If an
outgoing connection grabbed that port meanwhile, the restart fails with EADDRINUSE.  So we hand
out ports from *below* the ephemeral range, where the kernel never picks local ports by itself,
and fall back to port 0 only if that range is unusable.

Collisions are prevented three ways:

* inside one process, a reservation set (guarded by a thread lock) so two concurrent
  allocations never return the same port;
* across processes (two runs on one machine), an ``flock`` on ``<tmp>/turnout-ports-<uid>/<port>``
  held until the port is released or the process dies (the kernel drops the lock then);
* a test ``bind`` proves nobody else (not using our locks) is listening there right now.

A port is free between our test bind and the child's own bind; the locks make that window
harmless for turnout runs, and starting the scan at a random offset makes it unlikely for others.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path
from typing import Final, final

__all__ = [
    "PortAllocator",
    "PortExhaustedError",
    "allocate_port",
    "default_allocator",
]

LOOPBACK: Final = "127.0.0.1"
# Below 20000 live many well-known dev services (6379 redis, 8474 toxiproxy, 9000s...).
_DEFAULT_LOW: Final = 20000
_FALLBACK_EPHEMERAL: Final = (32768, 60999)


class PortExhaustedError(OSError):
    """No free port could be reserved."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _FALLBACK_EPHEMERAL


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR mirrors what servers do, so a port left in TIME_WAIT by a previous
        # incarnation counts as free (the child will be able to bind it too).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
    return True


@final
class PortAllocator:
    """Hands out distinct, currently free TCP ports on a loopback address.

    Thread-safe.  Every allocated port stays reserved (in-process set plus a cross-process file
    lock) until :meth:`release` or :meth:`close`.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        *,
        low: int | None = None,
        high: int | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        eph_low, _ = _ephemeral_range()
        self.host = host
        self.low = _DEFAULT_LOW if low is None else low
        self.high = (eph_low - 1) if high is None else high
        self._lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"turnout-ports-{os.getuid()}"
        self._lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._mutex = threading.Lock()
        self._reserved: dict[int, int | None] = {}  # port -> lock file descriptor
        self._rng = random.Random()

    def allocate(self) -> int:
        """Reserve and return one free port.

        Raises:
            PortExhaustedError: nothing in the range (nor from the kernel) could be reserved.
        """
        with self._mutex:
            span = self.high - self.low + 1
            if span > 0:
                start = self._rng.randrange(span)
                for i in range(span):
                    port = self.low + (start + i) % span
                    if port in self._reserved:
                        continue
                    fd = self._try_lock(port)
                    if fd is None:
                        continue
                    if _can_bind(self.host, port):
                        self._reserved[port] = fd
                        return port
                    os.close(fd)
            return self._allocate_ephemeral()

    def allocate_many(self, count: int) -> list[int]:
        """Reserve ``count`` distinct ports (all or none)."""
        ports: list[int] = []
        try:
            for _ in range(count):
                ports.append(self.allocate())
        except BaseException:
            for port in ports:
                self.release(port)
            raise
        return ports

    def release(self, port: int) -> None:
        """Give a port back; unknown ports are ignored."""
        with self._mutex:
            fd = self._reserved.pop(port, None)
        if fd is not None:
            os.close(fd)

    def reserved(self) -> frozenset[int]:
        with self._mutex:
            return frozenset(self._reserved)

    def close(self) -> None:
        """Release every port this allocator holds."""
        for port in self.reserved():
            self.release(port)

    def _try_lock(self, port: int) -> int | None:
        path = self._lock_dir / str(port)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _allocate_ephemeral(self) -> int:
        # Last resort: the kernel guarantees the port is not bound right now; the reservation
        # set still keeps this process from handing it out twice.
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((self.host, 0))
                port = sock.getsockname()[1]
            if port in self._reserved:
                continue
            fd = self._try_lock(port)
            if fd is None:
                continue
            self._reserved[port] = fd
            return port
        raise PortExhaustedError(f"no free TCP port on {self.host}")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_default: PortAllocator | None = None
_default_mutex = threading.Lock()


def default_allocator() -> PortAllocator:
    """The process-wide allocator (created on first use)."""
    global _default
    with _default_mutex:
        if _default is None:
            _default = PortAllocator()
        return _default


def allocate_port() -> int:
    """Reserve one free loopback port from the process-wide allocator."""
    return default_allocator().allocate()
