"""Latency on a client link without a proxy: the netfilter delay link (harness.netdelay).

The message and rule builders are checked as pure functions; the link itself against the
real kernel (an iptables NFQUEUE rule, a TCP echo over loopback), where root and iptables are
there (scripts/setup.sh installs iptables; CI runs as root).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
import trio

from harness import netdelay
from harness.fleet_control import source_addresses
from harness.netdelay import DelayLink, LinkError, delay_rules, packet_ids
from harness.ports import PortAllocator


def test_rules_queue_one_stream_of_the_lane_and_only_its_viewers() -> None:
    down = delay_rules("downstream", 4100, ("127.0.0.3", "127.0.0.8"), 4242)
    assert [r[:6] for r in down] == [
        ["-p", "tcp", "--sport", "4100", "-d", "127.0.0.3"],
        ["-p", "tcp", "--sport", "4100", "-d", "127.0.0.8"]]
    assert all(r[-5:] == ["-j", "NFQUEUE", "--queue-num", "4242", "--queue-bypass"]
               and "turnout-netdelay-4242" in r for r in down)
    (up,) = delay_rules("upstream", 4100, (), 7)
    assert up[:4] == ["-p", "tcp", "--dport", "4100"]
    assert "-s" not in up
    assert "-d" not in up
    with pytest.raises(ValueError, match="upstream or downstream"):
        delay_rules("both", 4100, (), 7)


def test_packet_ids_and_errors_are_read_from_a_datagram() -> None:
    def packet(packet_id: int) -> bytes:
        hdr = netdelay._attr(1, struct.pack("!IHB", packet_id, 0x0800, 3))
        mark = netdelay._attr(3, struct.pack("!I", 9))
        body = struct.pack("=BBH", 2, 0, socket.htons(5)) + mark + hdr
        return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body

    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -22) + b"\0" * 16
    ok = struct.pack("=IHHII", 36, 2, 0, 2, 0) + struct.pack("=i", 0) + b"\0" * 16
    assert packet_ids(packet(17) + packet(18) + ok + error) == ([17, 18], [22])
    verdict = netdelay.accept_through(5, 18)
    length, kind, flags = struct.unpack_from("=IHH", verdict)
    assert (length, kind, flags) == (len(verdict), (3 << 8) | 3, 1)
    assert struct.unpack_from("!II", verdict, 24) == (1, 18)  # NF_ACCEPT, through id 18


def test_each_lane_has_source_addresses_of_its_own() -> None:
    lanes = 5
    addresses = source_addresses(40_000, lanes=lanes)
    assert len(addresses) % lanes == 0
    assert "127.0.0.1" not in addresses
    for viewer in range(1, 2_000):  # the fleet: lane id % lanes, address id % count
        address = addresses[viewer % len(addresses)]
        assert address in addresses[viewer % lanes::lanes]
    with pytest.raises(ValueError, match="253"):
        source_addresses(40_000, lanes=254)


needs_netfilter = pytest.mark.skipif(
    netdelay.unavailable() is not None, reason=str(netdelay.unavailable()))


async def _round_trip_ms(sock: trio.SocketStream) -> float:
    start = time.monotonic()
    await sock.send_all(b"x")
    await sock.receive_some(16)
    return (time.monotonic() - start) * 1000.0


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def _connect(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def _total_retransmits(stream: trio.SocketStream) -> int:
    info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, 100)[0])  # tcpi_total_retrans


def _rules_of(queue_comment: str) -> list[str]:
    out = subprocess.run([netdelay.IPTABLES, "-w", "5", "-t", "mangle", "-S", "OUTPUT"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if queue_comment in line]


@needs_netfilter
async def test_latency_holds_the_lanes_packets_only_while_it_lasts() -> None:
    ports = PortAllocator()
    queues: list[int] = []

    def number() -> int:
        queues.append(ports.allocate())
        return queues[-1]

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(trio.serve_tcp, _echo, 0)
                port = listeners[0].socket.getsockname()[1]
                link = DelayLink("clients->lb[0]", port, ("127.0.0.5",), nursery,
                                 queue_numbers=number, release_number=ports.release, seed=1)
                mine, other = await _connect("127.0.0.5", port), await _connect("127.0.0.6", port)
                assert await _round_trip_ms(mine) < 50

                await link.add_toxic("latency", stream="downstream", name="spike",
                                     attributes={"latency": 150, "jitter": 20})
                assert _rules_of(f"turnout-netdelay-{queues[0]} ")
                held = [await _round_trip_ms(mine) for _ in range(4)]
                assert all(125 <= ms <= 400 for ms in held), held
                assert await _round_trip_ms(other) < 50  # another lane's viewer
                assert link.held["spike"] >= 4

                await link.remove_toxic("spike")
                assert not _rules_of(f"turnout-netdelay-{queues[0]} ")
                assert await _round_trip_ms(mine) < 50
                await link.remove_toxic("spike", missing_ok=True)
                with pytest.raises(LinkError, match="only latency"):
                    await link.add_toxic("bandwidth", attributes={"rate": 1})
                await mine.aclose()
                await other.aclose()
                nursery.cancel_scope.cancel()
    finally:
        ports.close()
    assert queues
    assert ports.reserved() == frozenset()


@needs_netfilter
async def test_a_held_link_lets_everything_through_when_the_run_is_torn_down() -> None:
    """Cancelling the holder (the topology going down mid-fault) releases what it holds and
    removes its rule: nothing stays queued or delayed after the run."""
    ports = PortAllocator()
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as outer:
                listeners = await outer.start(trio.serve_tcp, _echo, 0)
                port = listeners[0].socket.getsockname()[1]
                queue = ports.allocate()
                ports.release(queue)
                with trio.CancelScope() as holders_scope:
                    async with trio.open_nursery() as holders:
                        link = DelayLink("clients->lb[1]", port, ("127.0.0.7",), holders,
                                         queue_numbers=lambda: queue,
                                         release_number=lambda _n: None)
                        viewer = await _connect("127.0.0.7", port)
                        await link.add_toxic("latency", stream="upstream", name="up",
                                             attributes={"latency": 10_000})
                        await viewer.send_all(b"y")  # held for 10 s
                        # Long enough for TCP's own retransmissions to be held as well.
                        await trio.sleep(1.0)
                        holders_scope.cancel()
                assert not _rules_of(f"turnout-netdelay-{queue} ")
                with trio.fail_after(2):
                    assert await viewer.receive_some(16) == b"y"
                # The held packet itself was accepted, not dropped with the queue and sent
                # again by TCP.
                assert link.held["up"] >= 1
                assert _total_retransmits(viewer) == 0
                await viewer.aclose()
                outer.cancel_scope.cancel()
    finally:
        ports.close()


def test_a_kernel_topology_gives_each_delayed_lane_its_own_source_addresses() -> None:
    from harness.topology import TopologySpec

    kernel = {"clients": 20, "lane_capacity": 10, "balancer": "kernel", "lb_proxies": False,
              "client_proxies": False}
    spec = TopologySpec(**kernel, delay_lanes=(0,), client_sources=("a", "b", "c", "d"))
    assert spec.lanes == 2
    assert spec.lane_sources(0) == ("a", "c")
    assert spec.lane_sources(1) == ("b", "d")
    with pytest.raises(ValueError, match="multiple of the 2 lanes"):
        TopologySpec(**kernel, delay_lanes=(0,), client_sources=("a", "b", "c"))
    with pytest.raises(ValueError, match="both a Toxiproxy and a delay link"):
        TopologySpec(**{**kernel, "client_proxies": (1,)}, delay_lanes=(1,),
                     client_sources=("a", "b"))
    behind_haproxy = TopologySpec(clients=20, lane_capacity=10, lb_proxies=False,
                                  client_proxies=False, delay_lanes=(1,))
    assert behind_haproxy.lane_sources(1) == ()  # its own frontend port tells it apart


async def test_a_fault_reaches_a_delay_link_only_if_it_is_latency(tmp_path: object) -> None:
    import random
    from pathlib import Path

    from harness.faults import FaultContext, FaultError
    from harness.topology import Topology, TopologySpec

    topology = Topology(TopologySpec(clients=20, lane_capacity=10), Path(str(tmp_path)),
                        None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        link = DelayLink("clients->lb[1]", 1, (), nursery, queue_numbers=lambda: 1,
                         release_number=lambda _n: None)
        topology.delay_links[link.name] = link
        ctx = FaultContext(topology=topology, rng=random.Random(1))
        assert ctx.toxic_links("latency", "clients") == [("clients->lb[1]", link)]
        with pytest.raises(FaultError, match=r"clients->lb\[1\] has no Toxiproxy in this run"):
            ctx.links("bandwidth", "clients->lb[1]")
        assert "clients->lb[1]" in topology.link_names


def test_stale_rules_are_those_whose_queue_nobody_holds() -> None:
    listed = [
        "-P OUTPUT ACCEPT",
        "-A OUTPUT -p tcp -m tcp --sport 4100 -m comment --comment turnout-netdelay-4100 "
        "-j NFQUEUE --queue-num 4100 --queue-bypass",
        "-A OUTPUT -p tcp -m tcp --dport 4200 -m comment --comment turnout-netdelay-4200 "
        "-j NFQUEUE --queue-num 4200 --queue-bypass",
        "-A OUTPUT -p tcp -m comment --comment someone-else -j NFQUEUE --queue-num 9",
    ]
    assert netdelay.stale_rules(listed, bound=[4200]) == [listed[1].split()[2:]]
    assert netdelay.stale_rules(listed, bound=[4100, 4200]) == []


@needs_netfilter
async def test_a_killed_runs_rules_are_removed_and_a_live_ones_kept() -> None:
    ports = PortAllocator()
    try:
        dead, live = ports.allocate(), ports.allocate()
        holder = netdelay._Queue(live)  # a live run binds its queue before adding its rule
        try:
            for number in (dead, live):
                await netdelay._iptables("-A", delay_rules("downstream", number, (), number))
            assert await netdelay.remove_stale_rules() >= 1
            assert not _rules_of(f"turnout-netdelay-{dead} ")
            assert _rules_of(f"turnout-netdelay-{live} ")
        finally:
            for number in (dead, live):
                await netdelay._iptables("-D", delay_rules("downstream", number, (), number))
            holder.close()
    finally:
        ports.close()
