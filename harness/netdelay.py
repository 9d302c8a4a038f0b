"""Latency on a lane's client links with no proxy on the data path (``client_link_faults =
"netfilter"``).

Toxiproxy adds latency by relaying every byte, so it sits on its links for the whole run: on
one lane of 8,000 viewers that relay costs ~25 µs of CPU per proxied delivery from the first
second, for a spike that lasts one minute (docs/benchmarks.md). Here the lane's links are plain
kernel TCP. Only while a latency fault holds does an iptables rule send the lane's packets to an
NFQUEUE, where :class:`DelayLink` holds each one for latency ± jitter and then releases it, in
arrival order (one batch verdict accepts every earlier packet). Before and after the fault no
rule exists, and the lane's packets cost nothing extra.

Why these pieces: this machine's kernel has no ``netem`` qdisc and no nftables queue
(``NFT_QUEUE``), but it has iptables' ``NFQUEUE`` target; and the only Python binding of
libnetfilter_queue must be compiled against the C library, while the holder needs four netlink
messages (bind, copy mode, packet, batch verdict), written here by hand.

What it needs: root (``CAP_NET_ADMIN``), ``iptables-legacy`` (Debian package ``iptables``,
installed by scripts/setup.sh) and a kernel with ``xt_NFQUEUE``; :func:`unavailable` says which
is missing. Every rule has ``--queue-bypass``: if the holder dies, packets flow unheld.
Only ``latency`` can be injected this way; other link faults need a Toxiproxy link.

Streams: ``downstream`` is what the lane's entry port sends to the viewers (``--sport``),
``upstream`` what the viewers send to it (``--dport``). Under the kernel balancer every lane
shares one port, so a lane's packets are told apart by its viewers' source addresses
(``harness.fleet_control.source_addresses`` gives lane *i* the addresses ``[i::lanes]``).
Real clients (``[[client_groups]]``: pusher-js, Chromium) connect from 127.0.0.1, so the
experiment loader refuses a client-link fault with them under the kernel balancer.
"""

from __future__ import annotations

import collections
import errno
import math
import os
import random
import shutil
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import trio

__all__ = ["DelayLink", "LinkError", "delay_rules", "packet_ids", "remove_stale_rules",
           "stale_rules", "unavailable"]

IPTABLES: Final = "iptables-legacy"
_AF_NETLINK: Final = 16
_NETLINK_NETFILTER: Final = 12
_SOL_NETLINK: Final = 270
_NETLINK_NO_ENOBUFS: Final = 5
_SO_RCVBUFFORCE: Final = 33
_NFNL_SUBSYS_QUEUE: Final = 3
_MSG_PACKET, _MSG_CONFIG, _MSG_VERDICT_BATCH = 0, 2, 3
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_CFG_CMD, _CFG_PARAMS, _CFG_QUEUE_MAXLEN, _CFG_MASK, _CFG_FLAGS = 1, 2, 3, 4, 5
_CMD_BIND: Final = 1
_COPY_META: Final = 1
_F_FAIL_OPEN: Final = 1
_ATTR_PACKET_HDR, _ATTR_VERDICT_HDR = 1, 2
_NF_ACCEPT: Final = 1
#: Packets one queue may hold; beyond it (fail-open) the kernel lets them through unheld.
QUEUE_MAXLEN: Final = 65536
_RCVBUF: Final = 32 << 20


class LinkError(RuntimeError):
    """A delay could not be put on or taken off a link (the fault reports it)."""


# --- the netlink messages (pure) -------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attrs: Sequence[bytes], seq: int, *, ack: bool) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    flags = _NLM_F_REQUEST | (_NLM_F_ACK if ack else 0)
    return struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | kind, flags,
                       seq, 0) + body


def bind_messages(queue: int) -> list[bytes]:
    """Bind ``queue``, copy only packet metadata, hold up to QUEUE_MAXLEN, fail open."""
    return [
        _message(_MSG_CONFIG, queue, [_attr(_CFG_CMD, struct.pack("!BBH", _CMD_BIND, 0,
                                                                  socket.AF_INET))], 1, ack=True),
        _message(_MSG_CONFIG, queue, [
            _attr(_CFG_PARAMS, struct.pack("!IB", 0, _COPY_META)),
            _attr(_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)),
            _attr(_CFG_MASK, struct.pack("!I", _F_FAIL_OPEN)),
            _attr(_CFG_FLAGS, struct.pack("!I", _F_FAIL_OPEN))], 2, ack=True),
    ]


def accept_through(queue: int, packet_id: int) -> bytes:
    """The batch verdict that accepts every queued packet up to ``packet_id``."""
    return _message(_MSG_VERDICT_BATCH, queue,
                    [_attr(_ATTR_VERDICT_HDR, struct.pack("!II", _NF_ACCEPT, packet_id))], 0,
                    ack=False)


def packet_ids(data: bytes) -> tuple[list[int], list[int]]:
    """(queued packet ids, netlink error codes) in one datagram from the queue socket."""
    ids: list[int] = []
    errors: list[int] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == _NLMSG_ERROR:
            code = struct.unpack_from("=i", data, offset + 16)[0]
            if code:
                errors.append(-code)
        elif kind == (_NFNL_SUBSYS_QUEUE << 8) | _MSG_PACKET:
            at = offset + 20  # nlmsghdr + nfgenmsg
            while at + 4 <= offset + length:
                attr_len, attr_kind = struct.unpack_from("=HH", data, at)
                if attr_len < 4:
                    break
                if attr_kind & 0x7FFF == _ATTR_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                at += (attr_len + 3) & ~3
        offset += (length + 3) & ~3
    return ids, errors


# --- the rules (pure) ------------------------------------------------------------------------


def delay_rules(stream: str, port: int, addresses: Sequence[str], queue: int) -> list[list[str]]:
    """The iptables ``mangle OUTPUT`` rule specs that queue one stream of a lane's links:
    downstream is what ``port`` sends (to ``addresses``, if given), upstream what is sent to it
    (from ``addresses``)."""
    if stream not in ("upstream", "downstream"):
        raise ValueError(f"stream must be upstream or downstream, got {stream!r}")
    port_match = ["--sport" if stream == "downstream" else "--dport", str(port)]
    peer = "-d" if stream == "downstream" else "-s"
    tail = ["-m", "comment", "--comment", f"turnout-netdelay-{queue}",
            "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    peers: Sequence[str | None] = addresses or [None]
    return [["-p", "tcp", *port_match, *([peer, address] if address else []), *tail]
            for address in peers]


#: The queues bound on this host (one line per queue: its number first).
BOUND_QUEUES: Final = "/proc/net/netfilter/nfnetlink_queue"


def stale_rules(rules: Sequence[str], bound: Sequence[int]) -> list[list[str]]:
    """The rule specs (``iptables -S`` lines) of delay links whose queue no process holds: left
    by a run that was killed outright (harmless, ``--queue-bypass``, but they pile up)."""
    stale: list[list[str]] = []
    for line in rules:
        words = line.split()
        if words[:2] != ["-A", "OUTPUT"] or "NFQUEUE" not in words:
            continue
        comment = next((w for w in words if w.startswith("turnout-netdelay-")), None)
        if comment is None:
            continue
        number = comment.removeprefix("turnout-netdelay-")
        if number.isdigit() and int(number) not in bound:
            stale.append(words[2:])
    return stale


async def remove_stale_rules() -> int:
    """Delete the delay-link rules whose queue is not bound; returns how many."""
    listed = await trio.run_process([IPTABLES, "-w", "5", "-t", "mangle", "-S", "OUTPUT"],
                                    capture_stdout=True, capture_stderr=True, check=False)
    try:
        with open(BOUND_QUEUES) as table:
            bound = [int(line.split()[0]) for line in table if line.strip()]
    except FileNotFoundError:
        bound = []  # no queue bound since boot
    stale = stale_rules(listed.stdout.decode().splitlines(), bound)
    await _iptables("-D", stale)
    return len(stale)


def unavailable() -> str | None:
    """Why a netfilter delay cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "netfilter link delays need root (CAP_NET_ADMIN) to add iptables rules"
    if shutil.which(IPTABLES) is None:
        return (f"netfilter link delays need {IPTABLES} (Debian package iptables; "
                "scripts/setup.sh installs it)")
    try:
        with socket.socket(_AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER):
            pass
    except OSError as exc:
        return f"the kernel refused a netfilter netlink socket ({exc}): no NFQUEUE here"
    return None


# --- the holder ------------------------------------------------------------------------------


class _Queue:
    """One bound NFQUEUE: the netlink socket and its verdicts."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sock = socket.socket(_AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)
            self.sock.bind((0, 0))
            for message in bind_messages(number):
                self.sock.send(message)
                _, errors = packet_ids(self.sock.recv(65536))
                if errors:
                    raise LinkError(f"binding NFQUEUE {number}: {os.strerror(errors[0])}")
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def read(self) -> list[int]:
        """Every packet id waiting on the socket (non-blocking)."""
        ids: list[int] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return ids
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue  # the ids lost here are accepted by the next batch verdict
                raise
            found, _ = packet_ids(data)
            ids.extend(found)

    def accept_through(self, packet_id: int) -> None:
        self.sock.send(accept_through(self.number, packet_id))

    def close(self) -> None:
        self.sock.close()


async def _iptables(action: str, rules: Sequence[Sequence[str]]) -> None:
    for rule in rules:
        result = await trio.run_process(
            [IPTABLES, "-w", "5", "-t", "mangle", action, "OUTPUT", *rule],
            capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode != 0 and action != "-D":
            raise LinkError(f"{IPTABLES} {action} failed: "
                            f"{result.stderr.decode(errors='replace').strip()}")


class DelayLink:
    """A client link that Toxiproxy does not relay; a latency fault holds its packets in an
    NFQUEUE for as long as it lasts. Offers the two calls link faults make on a proxy."""

    def __init__(self, name: str, port: int, addresses: Sequence[str],
                 nursery: trio.Nursery, queue_numbers: Callable[[], int],
                 release_number: Callable[[int], None], seed: int | None = None) -> None:
        self.name = name
        self.port = port
        self.addresses = tuple(addresses)
        self._nursery = nursery
        self._queue_numbers = queue_numbers
        self._release_number = release_number
        self._rng = random.Random(seed)
        #: toxic name -> (cancel scope, done event) of the holder running it
        self._holders: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        #: packets the last hold of each toxic name held (what the fault did, for reports)
        self.held: collections.Counter[str] = collections.Counter()

    async def add_toxic(self, type: str, *, stream: str = "downstream",
                        attributes: Mapping[str, int | float] | None = None,
                        toxicity: float = 1.0, name: str | None = None) -> None:
        if type != "latency":
            raise LinkError(
                f"{self.name} has no Toxiproxy in this run (cluster.client_link_faults = "
                f"'netfilter'): only latency can be put on it, not {type}")
        name = name or f"latency_{stream}"
        if name in self._holders:
            raise LinkError(f"{self.name} already has a toxic named {name!r}")
        attrs = dict(attributes or {})
        latency_s = float(attrs.get("latency", 0)) / 1000.0
        jitter_s = float(attrs.get("jitter", 0)) / 1000.0
        await self._nursery.start(self._hold, name, stream, latency_s, jitter_s)

    async def remove_toxic(self, name: str, *, missing_ok: bool = False) -> None:
        holder = self._holders.pop(name, None)
        if holder is None:
            if missing_ok:
                return
            raise LinkError(f"{self.name} has no toxic named {name!r}")
        scope, done = holder
        scope.cancel()
        await done.wait()

    async def _hold(self, name: str, stream: str, latency_s: float, jitter_s: float, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        number = self._queue_numbers()
        done = trio.Event()
        try:
            queue = _Queue(number)
        except BaseException:
            self._release_number(number)
            done.set()
            raise
        rules = delay_rules(stream, self.port, self.addresses, number)
        held: collections.deque[tuple[float, int]] = collections.deque()
        last_due = 0.0
        try:
            with trio.CancelScope() as scope:
                await _iptables("-A", rules)
                self._holders[name] = (scope, done)
                self.held[name] = 0
                task_status.started()
                while True:
                    wait = held[0][0] - time.monotonic() if held else math.inf
                    with trio.move_on_after(max(0.0, wait)):
                        await trio.lowlevel.wait_readable(queue.sock)
                    now = time.monotonic()
                    for packet in queue.read():
                        delay = max(0.0, latency_s + self._rng.uniform(-jitter_s, jitter_s))
                        last_due = max(last_due, now + delay)  # in order, as a relay would
                        held.append((last_due, packet))
                        self.held[name] += 1
                    last = None
                    while held and held[0][0] <= now:
                        last = held.popleft()[1]
                    if last is not None:
                        queue.accept_through(last)
        finally:
            with trio.CancelScope(shield=True):
                # Release what is held before the rule goes, so nothing overtakes it; then the
                # stragglers queued before the rule was gone.
                if held:
                    queue.accept_through(held[-1][1])
                await _iptables("-D", rules)
                stragglers = queue.read()
                if stragglers:
                    queue.accept_through(max(stragglers))
                queue.close()
                self._release_number(number)
                self._holders.pop(name, None)
                done.set()
