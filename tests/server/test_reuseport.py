"""Counting a SO_REUSEPORT group from /proc/net/tcp (server/reuseport.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from server.reuseport import listeners_in, listening_sockets

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode")


def row(n: int, local: str, remote: str, state: str) -> str:
    return (f"{n:4d}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0"
            "        0 1 1 0000000000000000 100 0 0 10 0")


def test_counts_the_listeners_on_one_address_and_port_and_stops_at_the_first_other_state():
    text = [
        HEADER,
        row(0, "0100007F:1F90", "00000000:0000", "0A"),   # 127.0.0.1:8080
        row(1, "0100007F:1F90", "00000000:0000", "0A"),
        row(2, "0200007F:1F90", "00000000:0000", "0A"),   # 127.0.0.2:8080: another address
        row(3, "0100007F:1F91", "00000000:0000", "0A"),   # 127.0.0.1:8081: another port
        row(4, "0100007F:1F90", "0100007F:D431", "01"),   # an established connection
        row(5, "0100007F:1F90", "00000000:0000", "0A"),   # never read: past the listeners
    ]
    assert listeners_in(text, "127.0.0.1", 8080) == 2
    assert listeners_in(text, "127.0.0.2", 8080) == 1
    assert listeners_in(text, "127.0.0.1", 8081) == 1
    assert listeners_in(text, "127.0.0.3", 8080) == 0
    assert listeners_in([HEADER], "127.0.0.1", 8080) == 0


def test_ipv6_addresses_are_written_word_by_word():
    loopback6 = "00000000000000000000000001000000"  # ::1
    text = [HEADER, row(0, f"{loopback6}:0050", "0" * 32 + ":0000", "0A")]
    assert listeners_in(text, "::1", 80) == 1
    assert listeners_in(text, "::1", 81) == 0


@pytest.fixture
def group() -> Iterator[tuple[list[socket.socket], int]]:
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.bind(("127.0.0.1", 0))
    first.listen()
    members = [first]
    try:
        yield members, first.getsockname()[1]
    finally:
        for sock in members:
            sock.close()


def test_counts_a_real_group_as_it_grows_and_shrinks(group):
    members, port = group
    # An established connection on the same port must not be counted (nor stop the count
    # early: listeners come first in the table).
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = members[0].accept()
    try:
        assert listening_sockets("127.0.0.1", port) == 1
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            members.append(sock)
        assert listening_sockets("127.0.0.1", port) == 3
        members.pop().close()
        assert listening_sockets("127.0.0.1", port) == 2
    finally:
        client.close()
        accepted.close()
