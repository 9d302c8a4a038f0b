"""Real-process tests of the harness plumbing: ports, supervisor, Toxiproxy, HAProxy, topology.

They start real redis-server / toxiproxy-server / haproxy processes (and real turnout nodes in
the last test), so every test has an absolute deadline and checks with psutil that no child
outlives it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from harness.ports import PortAllocator, _ephemeral_range
from harness.procs import (
    REPO_ROOT,
    ProcessFailed,
    ProcessSpec,
    ProcState,
    ReadinessTimeout,
    cancel_on_signals,
    open_supervisor,
    tcp_ready,
)
from harness.topology import (
    NodeState,
    Topology,
    TopologySpec,
    check_haproxy_config,
    in_rotation,
    render_haproxy_config,
    run_topology,
)
from harness.toxiproxy import start_toxiproxy

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
SLEEPER = [PY, "-c", "import time; time.sleep(600)"]

# A stand-in node: answers GET /health with 200 and takes (and ignores) turnout-server's flags,
# so the topology plumbing can be tested without the real server.
FAKE_NODE = textwrap.dedent(
    """
    import argparse, http.server, os, signal
    p = argparse.ArgumentParser()
    p.add_argument("--host"); p.add_argument("--port", type=int); p.add_argument("--node-id")
    p.add_argument("--unix-socket", default="")
    p.add_argument("--shared-port", type=int, default=0)
    args, _ = p.parse_known_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = f"ok {args.node_id}".encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    if args.unix_socket:  # what the load balancer uses when no proxy is in between
        import socketserver, threading
        class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True
        unix = UnixServer(args.unix_socket, Handler)
        threading.Thread(target=unix.serve_forever, daemon=True).start()
    if args.shared_port:  # the kernel balancer: every node in one SO_REUSEPORT group
        import socket, threading
        class SharedServer(http.server.ThreadingHTTPServer):
            def server_bind(self):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                super().server_bind()
        shared = SharedServer((args.host, args.shared_port), Handler)
        threading.Thread(target=shared.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    server.serve_forever()
    """
)


def _alive(pid: int | None) -> bool:
    # A zombie is dead: it only waits for its (possibly non-reaping) new parent to collect it.
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _wait_gone(pids: Iterable[int | None], timeout: float = 10.0) -> None:
    pids = list(pids)
    with trio.move_on_after(timeout):
        while any(_alive(p) for p in pids):
            await trio.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "children outlived their supervisor"


def _descendants(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# --- ports ----------------------------------------------------------------------------------


def test_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    allocator = PortAllocator()
    got: list[int] = []
    mutex = threading.Lock()

    def grab() -> None:
        mine = [allocator.allocate() for _ in range(25)]
        with mutex:
            got.extend(mine)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(got) == len(set(got)) == 200
        eph_low, eph_high = _ephemeral_range()
        assert not [p for p in got if eph_low <= p <= eph_high]
        # A second allocator stands for a second run on the same machine: it must not get any
        # port the first still holds, even though none of them is bound yet.
        other = PortAllocator()
        try:
            theirs = other.allocate_many(200)
            assert not set(theirs) & set(got)
        finally:
            other.close()
        for port in got[:20]:
            with socket.socket() as sock:
                # As every server does: a port whose old connections sit in TIME_WAIT is free.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()
    finally:
        allocator.close()
    assert allocator.reserved() == frozenset()


# --- supervisor -----------------------------------------------------------------------------


async def test_supervisor_kills_children_and_grandchildren_on_cancel(tmp_path: Path) -> None:
    with trio.fail_after(20):
        pids: list[int | None] = []
        with trio.CancelScope() as scope:
            async with open_supervisor(tmp_path) as sup:
                a = await sup.start(ProcessSpec("a", SLEEPER))
                # A shell whose background child shares its process group: teardown must reach it.
                b = await sup.start(ProcessSpec("b", ["sh", "-c", "sleep 600 & sleep 600"]))
                with trio.fail_after(5):
                    while len(_descendants(b.pid)) < 2:
                        await trio.sleep(0.02)
                pids = [a.pid, b.pid, *_descendants(b.pid)]
                assert all(_alive(p) for p in pids)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert a.state is ProcState.EXITED
        await _wait_gone(pids)


async def test_stop_escalates_pause_resume_restart_and_exit_codes(tmp_path: Path) -> None:
    stubborn = [
        PY,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    with trio.fail_after(30):
        async with open_supervisor(tmp_path) as sup:
            p = await sup.start(ProcessSpec("stubborn", stubborn))
            await trio.sleep(0.3)  # let it install its handler
            t0 = trio.current_time()
            assert await p.stop(grace=0.5) == -signal.SIGKILL
            assert 0.4 < trio.current_time() - t0 < 3

            q = await sup.start(ProcessSpec("quitter", ["sh", "-c", "sleep 0.2; exit 3"]))
            assert await q.wait() == 3
            assert q.state is ProcState.EXITED
            assert q.returncode == 3

            r = await sup.start(ProcessSpec("pausable", SLEEPER))
            r.pause()
            assert r.state is ProcState.PAUSED
            with trio.fail_after(5):
                while psutil.Process(r.pid).status() != psutil.STATUS_STOPPED:
                    await trio.sleep(0.02)
            r.resume()
            assert r.state is ProcState.RUNNING
            old_pid = r.pid
            r.pause()
            await r.restart(grace=1)  # stopping a paused process must not hang
            assert r.pid != old_pid
            assert r.state is ProcState.RUNNING
            assert r.statistics().starts == 2
            assert r.statistics().rss_bytes
            await _wait_gone([old_pid])
            assert "start #2" in r.log_path.read_text()
        await _wait_gone([r.pid])


async def test_readiness_failures_are_reported_with_the_log(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_supervisor(tmp_path) as sup:
            with pytest.raises(ProcessFailed, match="status 3") as info:
                await sup.start(
                    ProcessSpec(
                        "crasher",
                        ["sh", "-c", "echo boom-marker; exit 3"],
                        ready=tcp_ready("127.0.0.1", 9),
                    )
                )
            assert "boom-marker" in str(info.value)
            t0 = trio.current_time()
            with pytest.raises(ReadinessTimeout):
                await sup.start(
                    ProcessSpec("mute", SLEEPER, ready=tcp_ready("127.0.0.1", 9), ready_timeout=0.5)
                )
            assert trio.current_time() - t0 < 3
            mute = sup.processes["mute"]
            assert mute.state is ProcState.EXITED  # killed, not left behind


async def test_no_orphan_when_the_harness_is_sigkilled(tmp_path: Path) -> None:
    """pdeathsig: the supervisor's process dies without any teardown; its child must die too."""
    script = tmp_path / "harness_stub.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, trio
            from pathlib import Path
            from harness.procs import ProcessSpec, open_supervisor

            async def main():
                async with open_supervisor(Path(sys.argv[1])) as sup:
                    proc = await sup.start(ProcessSpec("sleeper", {SLEEPER!r}))
                    print(proc.pid, flush=True)
                    await trio.sleep(600)

            trio.run(main)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with trio.fail_after(30):
        stub = await trio.lowlevel.open_process(
            [PY, str(script), str(tmp_path / "logs")], stdout=subprocess.PIPE, env=env
        )
        try:
            assert stub.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await stub.stdout.receive_some(64)
                assert chunk, "stub exited before starting its child"
                line += chunk
            child = int(line)
            assert _alive(child)
            assert psutil.Process(child).ppid() == stub.pid
            assert os.getpgid(child) == child  # its own process group
            stub.send_signal(signal.SIGKILL)
            await stub.wait()
        finally:
            if stub.returncode is None:
                stub.kill()
                await stub.wait()
        await _wait_gone([child], timeout=5)


# --- toxiproxy ------------------------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def _rtt(stream: trio.SocketStream) -> float:
    t0 = time.monotonic()
    await stream.send_all(b"ping")
    got = b""
    while len(got) < 4:
        chunk = await stream.receive_some(64)
        assert chunk, "connection closed"
        got += chunk
    return time.monotonic() - t0


async def test_toxiproxy_latency_timeout_and_disable(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, _echo, 0)
            echo_port = listeners[0].socket.getsockname()[1]
            async with open_supervisor(tmp_path) as sup:
                server = await start_toxiproxy(sup)
                try:
                    proxy = await server.create_proxy("echo", f"127.0.0.1:{echo_port}")
                    stream = await trio.open_tcp_stream(proxy.listen_host, proxy.listen_port)
                    assert await _rtt(stream) < 0.1

                    # Latency applies to an already-open connection too.
                    toxic = await proxy.add_toxic("latency", attributes={"latency": 300})
                    assert toxic.name == "latency_downstream"
                    assert [t.name for t in await proxy.list_toxics()] == ["latency_downstream"]
                    assert 0.29 < await _rtt(stream) < 1.5
                    await proxy.remove_toxic("latency_downstream")
                    assert await proxy.list_toxics() == []
                    assert await _rtt(stream) < 0.1

                    # timeout=0 blackholes: data goes in, nothing comes back.
                    await proxy.add_toxic("timeout", stream="upstream", attributes={"timeout": 0})
                    with trio.move_on_after(0.7) as blackholed:
                        await _rtt(stream)
                    assert blackholed.cancelled_caught
                    # Removing a timeout toxic closes its connections.
                    await proxy.remove_toxic("timeout_upstream")
                    with trio.fail_after(3):
                        while await stream.receive_some(64):
                            pass
                    await stream.aclose()

                    stream = await trio.open_tcp_stream(proxy.listen_host, proxy.listen_port)
                    assert await _rtt(stream) < 0.1
                    await proxy.disable()  # closes live connections and stops listening
                    assert not (await proxy.state()).enabled
                    with trio.fail_after(3):
                        try:
                            while await stream.receive_some(64):
                                pass
                        except trio.BrokenResourceError:
                            pass
                    with pytest.raises(OSError):
                        await trio.open_tcp_stream(proxy.listen_host, proxy.listen_port)
                    await proxy.enable()
                    stream = await trio.open_tcp_stream(proxy.listen_host, proxy.listen_port)
                    assert await _rtt(stream) < 0.1
                    await stream.aclose()

                    # Typos are refused before they become silent no-op toxics.
                    with pytest.raises(ValueError, match="latency_ms"):
                        await proxy.add_toxic("latency", attributes={"latency_ms": 5})
                    await proxy.add_toxic("bandwidth", attributes={"rate": 10}, toxicity=0.5)
                    await server.reset()
                    assert await proxy.list_toxics() == []
                finally:
                    await server.aclose()
            nursery.cancel_scope.cancel()


async def test_two_toxiproxy_servers_in_one_process_do_not_interfere(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_supervisor(tmp_path) as sup:
            a = await start_toxiproxy(sup, "toxi-a")
            b = await start_toxiproxy(sup, "toxi-b")
            try:
                assert a.url != b.url
                # Same proxy name on both servers: each server keeps its own.
                pa = await a.create_proxy("link", "127.0.0.1:9")
                pb = await b.create_proxy("link", "127.0.0.1:9")
                assert pa.listen_port != pb.listen_port
                await pa.add_toxic("latency", attributes={"latency": 100})
                await pb.disable()
                assert [t.type for t in await pa.list_toxics()] == ["latency"]
                assert await pb.list_toxics() == []
                assert (await pa.state()).enabled
                assert not (await pb.state()).enabled
                await b.reset()
                assert [t.type for t in await pa.list_toxics()] == ["latency"]
            finally:
                await a.aclose()
                await b.aclose()


async def test_toxiproxy_python_is_process_global(tmp_path: Path) -> None:
    """Canary for harness/toxiproxy.py's docstring: toxiproxy-python's server address is a
    class attribute, so it cannot address two servers from one process.  If this starts
    failing, the library changed and keeping our own client should be reconsidered."""
    toxiproxy = pytest.importorskip("toxiproxy")

    with trio.fail_after(30):
        async with open_supervisor(tmp_path) as sup:
            a = await start_toxiproxy(sup, "toxi-a")
            b = await start_toxiproxy(sup, "toxi-b")
            try:

                def via_library() -> None:
                    client_a, client_b = toxiproxy.Toxiproxy(), toxiproxy.Toxiproxy()
                    client_a.update_api_consumer(a.host, a.port)
                    proxy_a = client_a.create(upstream="127.0.0.1:9", name="lib")
                    client_b.update_api_consumer(b.host, b.port)  # repoints client_a too
                    client_b.create(upstream="127.0.0.1:9", name="lib")
                    proxy_a.add_toxic(type="latency", attributes={"latency": 50})

                await trio.to_thread.run_sync(via_library)
                # The toxic meant for server A's proxy landed on server B.
                assert await a.list_toxics("lib") == []
                assert [t.type for t in await b.list_toxics("lib")] == ["latency"]
            finally:
                await a.aclose()
                await b.aclose()


# --- haproxy --------------------------------------------------------------------------------


async def test_generated_haproxy_config_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_haproxy_config(
            lane=0,
            frontend_port=21001,
            stats_port=21002,
            backends={"node-1": ("127.0.0.1", 21003), "node-2": ("127.0.0.1", 21004)},
            maxconn=5000,
        )
    )
    with trio.fail_after(15):
        output = await check_haproxy_config(config)
    assert "valid" in output.lower()
    text = config.read_text()
    for needle in (
        "balance leastconn",
        "option httpchk GET /health",
        "http-check expect status 200",
        "inter 2s fastinter 500ms downinter 500ms fall 2 rise 2",
        "timeout client 1h",
        "maxconn 5000",
        "nbthread 1",
        "    mode tcp\n",  # the relay
        "    mode http\n",  # the stats page only
    ):
        assert needle in text
    assert "frontend api" not in text


async def test_api_frontend_balances_each_request_and_tracks_the_checks(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_haproxy_config(
            lane=0,
            frontend_port=21001,
            stats_port=21002,
            backends={"node-1": ("127.0.0.1", 21003), "node-2": ("127.0.0.1", 21004)},
            maxconn=5000,
            source="127.0.1.1",
            api_port=21005,
        )
    )
    with trio.fail_after(15):
        output = await check_haproxy_config(config)
    assert "valid" in output.lower()
    api = config.read_text().split("frontend api0", 1)[1]
    assert "bind 127.0.0.1:21005" in api
    assert "balance roundrobin" in api
    assert api.count("    mode http\n") >= 2  # frontend and backend: per-request balancing
    assert "server node-1 127.0.0.1:21003 source 127.0.1.1 track nodes/node-1" in api
    assert "server node-2 127.0.0.1:21004 source 127.0.1.1 track nodes/node-2" in api
    assert "check" not in api.split("backend api", 1)[1].split("listen stats")[0]


@pytest.mark.parametrize(("status", "expected"), [
    (("UP", "L7OK"), True),
    (("UP 1/2", "* L7TOUT"), True),   # one slow answer under load: still in rotation
    (("UP 1/2", "L4TOUT"), True),
    (("UP 1/2", "L4CON"), False),     # refused: the node is gone, not slow
    (("UP 1/2", "L7STS"), False),     # answered, but not healthy (e.g. draining: 503)
    (("DOWN", "L7TOUT"), False),
    (("DOWN 1/2", "L7OK"), False),    # coming back, not yet in rotation
    (("NOLB", "L7OK"), False),
    (("MAINT", ""), False),
    (("?", ""), False),               # not in this lane's table at all
])
def test_in_rotation(status: tuple[str, str], expected: bool) -> None:
    assert in_rotation(status) is expected


async def test_unix_socket_backends_have_no_source_address(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_haproxy_config(
            lane=1, frontend_port=21001, stats_port=21002,
            backends={"node-1": str(tmp_path / "node-1.sock"), "node-2": ("127.0.0.1", 21004)},
            maxconn=5000, source="127.0.1.2", api_port=21005,
        )
    )
    with trio.fail_after(15):
        output = await check_haproxy_config(config)
    assert "valid" in output.lower()
    text = config.read_text()
    relay, api = text.split("frontend api1", 1)
    assert f"server node-1 unix@{tmp_path / 'node-1.sock'} check" in relay
    assert "server node-2 127.0.0.1:21004 source 127.0.1.2 check" in relay
    assert f"server node-1 unix@{tmp_path / 'node-1.sock'} track nodes/node-1" in api


# --- topology -------------------------------------------------------------------------------


def _topology_pids(topo: Topology) -> list[int | None]:
    pids: list[int | None] = [p.pid for p in topo.supervisor.processes.values()]
    return pids + [d for p in pids for d in _descendants(p)]


async def test_topology_plumbing_with_fake_nodes(tmp_path: Path) -> None:
    fake = tmp_path / "fake_node.py"
    fake.write_text(FAKE_NODE)
    # 4001 clients -> 2 lanes: exercises sharding without opening 4001 connections.
    spec = TopologySpec(nodes=2, clients=4001, node_command=(PY, str(fake)), ready_timeout_s=20)
    assert spec.lanes == 2
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, spec, tmp_path / "run")
            pids = _topology_pids(topo)
            assert len(topo.entry_urls) == 2
            # the publisher's API frontend is lane 0's HAProxy in HTTP mode, not the relay
            assert topo.http_api_url == f"http://127.0.0.1:{topo.lanes[0].api_port}"
            assert topo.lanes[1].api_port is None
            assert set(topo.proxies) == {
                "clients->lb[0]",
                "clients->lb[1]",
                "lb[0]->node-1",
                "lb[0]->node-2",
                "lb[1]->node-1",
                "lb[1]->node-2",
                "node-1->redis",
                "node-2->redis",
            }
            stats = topo.statistics()
            assert stats.lanes == 2
            assert stats.total_rss_bytes > 0
            assert {p.name for p in stats.processes} >= {"redis", "haproxy-lane1", "node-2"}
            assert dict(stats.nodes) == {"node-1": NodeState.UP, "node-2": NodeState.UP}
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                for url in topo.entry_urls:
                    assert (await client.get(f"{url}/health")).status_code == 200

            # Cutting one lane's LB->node link: only that lane's HAProxy sees the node down.
            await topo.proxy("lb[0]->node-1").disable()
            with trio.fail_after(10):
                while (await topo.lanes[0].backend_status())["node-1"][0] != "DOWN":
                    await trio.sleep(0.1)
            assert (await topo.lanes[1].backend_status())["node-1"][0] == "UP"
            await topo.reset_faults()
            await topo.wait_lb_ready(timeout=10)

            node = topo.nodes["node-2"]
            old_pid = node.pid
            await node.kill()
            assert node.state is NodeState.KILLED
            assert node.exit_code == -signal.SIGKILL
            await node.restart()
            assert node.state is NodeState.UP
            assert node.pid != old_pid
            assert await node.health() == 200
            pids.append(node.pid)
            node.pause()
            assert node.state is NodeState.PAUSED
            node.resume()
            assert await node.drain(grace=5) == 0
            assert node.state is NodeState.EXITED
            nursery.cancel_scope.cancel()
        await _wait_gone(pids)
    assert (tmp_path / "run" / "haproxy-lane1.cfg").exists()
    assert (tmp_path / "run" / "logs" / "redis.log").exists()


async def test_client_side_proxies_only_where_asked(tmp_path: Path) -> None:
    """Without client-side proxies a lane is HAProxy alone (9,000 clients under the fd cap), the
    entry is HAProxy's frontend and HAProxy checks and reaches the nodes directly, over their
    Unix sockets."""
    fake = tmp_path / "fake_node.py"
    fake.write_text(FAKE_NODE)
    spec = TopologySpec(nodes=2, clients=9001, node_command=(PY, str(fake)), ready_timeout_s=20,
                        client_proxies=False, lb_proxies=False)
    assert spec.capacity == 9000
    assert spec.lanes == 2
    assert TopologySpec(clients=9000, client_proxies=True, lb_proxies=False).lanes == 1
    assert TopologySpec(clients=4001).lanes == 2
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, spec, tmp_path / "run")
            pids = _topology_pids(topo)
            assert set(topo.proxies) == {"node-1->redis", "node-2->redis"}
            assert [lane.toxiproxy for lane in topo.lanes] == [None, None]
            assert topo.entry_urls == [f"http://127.0.0.1:{lane.frontend_port}"
                                       for lane in topo.lanes]
            config = (tmp_path / "run" / "haproxy-lane1.cfg").read_text()
            for node in topo.nodes.values():
                path = tmp_path / "run" / node.name / "node.sock"
                assert f"server {node.name} unix@{path} check" in config
                assert path.is_socket()
            assert "source 127.0.1.2" not in config  # only TCP backends have a source
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                for url in topo.entry_urls:
                    assert (await client.get(f"{url}/health")).status_code == 200
            await topo.nodes["node-1"].kill()
            with trio.fail_after(10):
                while (await topo.lanes[0].backend_status())["node-1"][0] != "DOWN":
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        await _wait_gone(pids)
    # A client proxy on one lane only (a fault on clients->lb[1]).
    one = TopologySpec(nodes=1, clients=9001, node_command=(PY, str(fake)), ready_timeout_s=20,
                       client_proxies=(1,), lb_proxies=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, one, tmp_path / "one")
            pids = _topology_pids(topo)
            assert set(topo.proxies) == {"clients->lb[1]", "node-1->redis"}
            assert topo.lanes[0].toxiproxy is None
            assert topo.entry_urls[1] == f"http://{topo.proxy('clients->lb[1]').listen}"
            nursery.cancel_scope.cancel()
        await _wait_gone(pids)


async def test_kernel_balancer_has_no_haproxy_and_spreads_over_live_nodes(tmp_path: Path
                                                                          ) -> None:
    """cluster.balancer = "kernel": the nodes share one SO_REUSEPORT port, lanes have no
    HAProxy (a Toxiproxy only where a client link fault needs one), new connections spread over
    the nodes, and a dead node's share goes to the others."""
    fake = tmp_path / "fake_node.py"
    fake.write_text(FAKE_NODE)
    with pytest.raises(ValueError, match="no lb->node links"):
        TopologySpec(balancer="kernel")
    with pytest.raises(ValueError, match="balancer must be one of haproxy, kernel"):
        TopologySpec(balancer="nginx", lb_proxies=False)
    with pytest.raises(ValueError, match="sockudo has none"):
        TopologySpec(balancer="kernel", lb_proxies=False, server="sockudo")
    spec = TopologySpec(nodes=2, clients=9001, node_command=(PY, str(fake)), ready_timeout_s=20,
                        client_proxies=(1,), lb_proxies=False, balancer="kernel")
    assert spec.lanes == 2

    async def who_answers(url: str, times: int) -> set[str]:
        seen = set()
        for _ in range(times):  # a new connection each time: each is balanced on its own
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                response = await client.get(f"{url}/health")
                assert response.status_code == 200
                seen.add(response.text.split()[-1])
        return seen

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, spec, tmp_path / "run")
            pids = _topology_pids(topo)
            assert not [p for p in topo.supervisor.processes if p.startswith("haproxy")]
            assert [lane.haproxy for lane in topo.lanes] == [None, None]
            shared = topo.lanes[0].frontend_port
            assert topo.entry_urls[0] == topo.http_api_url == f"http://127.0.0.1:{shared}"
            assert set(topo.proxies) == {"clients->lb[1]", "node-1->redis", "node-2->redis"}
            assert topo.proxy("clients->lb[1]").upstream == f"127.0.0.1:{shared}"
            assert await topo.lb_status() == {0: {}, 1: {}}
            for url in topo.entry_urls:
                assert await who_answers(url, 40) == {"node-1", "node-2"}

            await topo.nodes["node-1"].kill()
            assert await who_answers(topo.entry_urls[0], 20) == {"node-2"}
            await topo.nodes["node-1"].restart()
            await topo.wait_lb_ready(timeout=10)
            assert await who_answers(topo.entry_urls[0], 40) == {"node-1", "node-2"}
            pids.append(topo.nodes["node-1"].pid)
            nursery.cancel_scope.cancel()
        await _wait_gone(pids)


async def test_two_runs_coexist(tmp_path: Path) -> None:
    fake = tmp_path / "fake_node.py"
    fake.write_text(FAKE_NODE)
    spec = TopologySpec(nodes=1, clients=1, node_command=(PY, str(fake)), ready_timeout_s=20)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            one = await nursery.start(run_topology, spec, tmp_path / "one")
            two = await nursery.start(run_topology, spec, tmp_path / "two")

            def ports(topo: Topology) -> set[int]:
                listening = {topo.redis_port, *(n.port for n in topo.nodes.values())}
                listening |= {p.listen_port for p in topo.proxies.values()}
                listening |= {s.port for s in topo.toxiproxies}
                return listening | {
                    x for lane in topo.lanes for x in (lane.frontend_port, lane.stats_port)
                }

            assert not ports(one) & ports(two)
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                for topo in (one, two):
                    assert (await client.get(f"{topo.http_api_url}/health")).status_code == 200
            pids = _topology_pids(one) + _topology_pids(two)
            nursery.cancel_scope.cancel()
        await _wait_gone(pids)


async def test_sigterm_to_the_harness_cancels_the_run(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as run_scope:
                await nursery.start(cancel_on_signals, run_scope)
                async with open_supervisor(tmp_path) as sup:
                    child = await sup.start(ProcessSpec("sleeper", SLEEPER))
                    os.kill(os.getpid(), signal.SIGTERM)
                    await trio.sleep_forever()
            assert run_scope.cancelled_caught
        await _wait_gone([child.pid])


async def test_full_topology_with_real_nodes(tmp_path: Path) -> None:
    # A token that starts with "-" once broke the node's command line (argparse took it for a
    # flag); secrets now travel in the environment and must not show in the process list.
    token = "-starts-with-a-dash"
    spec = TopologySpec(nodes=2, clients=10, drain_grace_s=1, ready_timeout_s=45,
                        chaos_token=token)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, spec, tmp_path / "run")
            pids = _topology_pids(topo)
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                response = await client.get(f"{topo.http_api_url}/health")
                assert response.status_code == 200
                for node in topo.nodes.values():
                    assert await node.health() == 200
                    url = f"{node.chaos_url}/chaos/status"
                    ok = await client.get(url, headers={"x-chaos-token": token})
                    assert ok.status_code == 200, ok.text
                    refused = await client.get(url, headers={"x-chaos-token": "wrong"})
                    assert refused.status_code in (401, 403)
                    # The public port has no chaos route.
                    public = await client.get(f"{node.url}/chaos/status",
                                              headers={"x-chaos-token": token})
                    assert public.status_code == 404
                    cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes()
                    assert token.encode() not in cmdline
                    assert spec.app_secret.encode() not in cmdline
            status = await topo.lb_status()
            assert {s for lane in status.values() for s, _ in lane.values()} == {"UP"}
            nursery.cancel_scope.cancel()
        await _wait_gone(pids)


async def test_missing_binary_is_a_clear_setup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import procs
    from harness.procs import HarnessSetupError

    monkeypatch.setattr(procs, "TOOLS_BIN", tmp_path / "nowhere")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        HarnessSetupError, match=re.escape("toxiproxy-server not found: run scripts/setup.sh")
    ):
        procs.find_binary("toxiproxy-server")
    with pytest.raises(HarnessSetupError, match="redis-server not found"):
        await run_topology(TopologySpec(), tmp_path / "run")


def test_runs_proxy_only_the_client_side_links_their_faults_need() -> None:
    from harness.experiment import load_experiment, parse_experiment
    from harness.runner import proxied_links

    experiments = REPO / "experiments"

    def links(name: str) -> tuple[object, bool]:
        exp = load_experiment(experiments / f"{name}.toml")
        return proxied_links(exp.faults, exp.cluster.proxies)

    assert links("node-kill") == (False, False)  # process faults: no proxy on any client hop
    assert links("rolling-deploy") == (False, False)
    assert links("redis-partition") == (False, False)  # node->redis proxies always exist
    assert links("latency") == (True, False)
    assert links("flaky-network") == (True, True)  # clients toxics and lb->node-3 bandwidth
    one_lane = parse_experiment(
        'description = "x"\n[[faults]]\nat_s = 1\nkind = "latency"\n'
        'target = "clients->lb[1]"\n', default_name="x")
    assert proxied_links(one_lane.faults) == ((1,), False)
    assert proxied_links(one_lane.faults, "all") == (True, True)


def test_a_run_folder_too_deep_for_a_socket_path_gets_a_short_one(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from harness.topology import _unix_socket_path

    with ExitStack() as stack:  # what the topology's exit stack does with it
        near = tmp_path / "r"
        assert _unix_socket_path(near, "node-1", stack) == str(  # type: ignore[arg-type]
            near / "node-1" / "node.sock")
        path = _unix_socket_path(tmp_path / ("x" * 80), "node-1", stack)  # type: ignore[arg-type]
        assert len(path) <= 97  # HAProxy refuses longer unix@ paths
        assert path.endswith("node-1.sock")
        assert Path(path).parent.is_dir()
    assert not Path(path).parent.exists()  # gone with the topology
