"""How many sockets listen in a SO_REUSEPORT group: a node full to its high-water mark leaves
the shared port's group only if another node is still in it (alone, leaving would turn new
clients' "over capacity" answer into a refused connection while the node still has room).

Read from /proc/net/tcp{,6}, which lists listening sockets before any other, so only the
listening part is read however many connections the host holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["listeners_in", "listening_sockets"]

_LISTEN = "0A"


def _proc_address(host: str) -> str:
    """``host`` as /proc/net/tcp writes it: the address's 32-bit words in host byte order
    (little-endian here), in hex."""
    packed = ipaddress.ip_address(host).packed
    return "".join(packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4))


def listeners_in(lines: Iterable[str], host: str, port: int) -> int:
    """Sockets listening on exactly ``host``:``port`` in a /proc/net/tcp{,6} text (header
    line included). Stops at the first socket that is not listening."""
    wanted = f"{_proc_address(host)}:{port:04X}"
    count = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0] == "sl":
            continue
        if fields[3] != _LISTEN:
            break
        if fields[1] == wanted:
            count += 1
    return count


def listening_sockets(host: str, port: int) -> int:
    """Sockets of this network namespace listening on ``host``:``port`` (this node's included)."""
    table = "/proc/net/tcp6" if ":" in host else "/proc/net/tcp"
    with open(table, encoding="ascii") as proc:
        return listeners_in(proc, host, port)
