"""What one hop of the client path costs: HAProxy and Toxiproxy relaying websocket frames.

The same ~750-byte turnout channel event is broadcast by a source process to N websocket
connections that reach it directly or through a chain of relays, and a floor sink process
(epoll + recv only) receives it. For every process the CPU per delivered frame is measured
(``/proc/<pid>/task/*/schedstat``); all configurations run in the same invocation, rotated per
round, so ratios between them are comparable on a noisy shared machine.

Configurations:

``direct``               source <- sink
``haproxy``              HAProxy as the harness configured it before issue 10 (HTTP mode, one
                         thread per core)
``haproxy-1t``           the same with ``nbthread 1``
``haproxy-http-splice``  HTTP mode, one thread, ``option splice-auto``
``haproxy-tcp``          TCP mode, one thread
``haproxy-tcp-splice``   TCP mode, one thread, ``option splice-auto``
``haproxy-tuned``        what the harness runs now (``harness.topology.render_haproxy_config``:
                         TCP mode, one thread, fixed 64 KiB socket buffers)
``haproxy-tuned-pe``     the same with ``tune.maxpollevents 1024`` (default 200 events per
                         ``epoll_wait``)
``haproxy-unix``         the same, reaching the source over a Unix socket (what the harness runs
                         when no fault needs a proxy between HAProxy and the nodes)
``toxiproxy``            one Toxiproxy proxy (GOMAXPROCS unset: one P per core)
``toxiproxy-1p``         one Toxiproxy proxy with GOMAXPROCS=1

By default the run compares ``direct``, ``haproxy``, ``haproxy-tuned`` and ``toxiproxy``;
``--configs`` picks others.

    .venv/bin/python -m bench.hops [--connections 4000] [--messages 20] [--rounds 3]

Results and method: docs/benchmarks.md ("Hops").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.wire import BenchError, Child, cpu_ns, free_port

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("direct", "haproxy", "haproxy-1t", "haproxy-http-splice", "haproxy-tcp",
           "haproxy-tcp-splice", "haproxy-tuned", "haproxy-tuned-pe", "haproxy-unix",
           "toxiproxy", "toxiproxy-1p")
DEFAULT_CONFIGS = ("direct", "haproxy", "haproxy-tuned", "haproxy-unix", "toxiproxy")


def _python_role(module: str, role: str) -> list[str]:
    return [os.path.join(REPO, ".venv", "bin", "python") if os.path.exists(
        os.path.join(REPO, ".venv", "bin", "python")) else "python3", "-m", module, role]


def _find(name: str) -> str:
    from harness.procs import find_binary

    return find_binary(name)


def legacy_haproxy_config(frontend: int, backend: int, stats: int, threads: int | None,
                          mode: str = "http", extra: str = "") -> str:
    """The lane config the harness used before issue 10 (for the comparison)."""
    nbthread = f"    nbthread {threads}\n" if threads else ""
    return f"""global
    maxconn 9000
    maxpipes 200
{nbthread}    tune.sndbuf.client 65536
    tune.sndbuf.server 65536
    tune.rcvbuf.client 65536
    tune.rcvbuf.server 65536
defaults
    mode {mode}
{extra}    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
frontend f
    bind 127.0.0.1:{frontend}
    default_backend b
backend b
    balance leastconn
    server s1 127.0.0.1:{backend} maxconn 9000
listen stats
    mode http
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /
"""


def tuned_haproxy_config(frontend: int, backend: int | str, stats: int,
                         connections: int) -> str:
    from harness.topology import render_haproxy_config

    return render_haproxy_config(
        lane=0, frontend_port=frontend, stats_port=stats,
        backends={"s1": backend if isinstance(backend, str) else ("127.0.0.1", backend)},
        maxconn=connections + 1000, health_checks=False)


@dataclass
class Hop:
    children: list[Child] = field(default_factory=list)
    port: int = 0


def start_haproxy(config: str, frontend: int, stats: int, work: Path, name: str) -> Hop:
    path = work / f"{name}.cfg"
    path.write_text(config)
    child = Child([_find("haproxy"), "-f", str(path), "-db"], work / f"{name}.log", pipes=False)
    _wait_port(stats, child)
    return Hop([child], frontend)


def start_toxiproxy(upstream: int, work: Path, name: str, procs: int | None) -> Hop:
    api = free_port()
    env = dict(os.environ, LOG_LEVEL="warn")
    if procs:
        env["GOMAXPROCS"] = str(procs)
    child = Child([_find("toxiproxy-server"), "-host", "127.0.0.1", "-port", str(api)],
                  work / f"{name}.log", env=env, pipes=False)
    _wait_port(api, child)
    listen = free_port()
    body = json.dumps({"name": "p", "listen": f"127.0.0.1:{listen}",
                       "upstream": f"127.0.0.1:{upstream}", "enabled": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{api}/proxies", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()
    return Hop([child], listen)


def _wait_port(port: int, child: Child, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"{child.log_path.name} exited: {child.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"port {port} not listening")


def _unix_path(work: Path, config: str) -> str:
    return str(work / f"source-{config}.sock")


def build(config: str, source_port: int, work: Path, connections: int) -> Hop:
    if config == "direct":
        return Hop([], source_port)
    if config.startswith("haproxy"):
        frontend, stats = free_port(), free_port()
        if config == "haproxy":
            text = legacy_haproxy_config(frontend, source_port, stats, None)
        elif config == "haproxy-1t":
            text = legacy_haproxy_config(frontend, source_port, stats, 1)
        elif config == "haproxy-tcp":
            text = legacy_haproxy_config(frontend, source_port, stats, 1, "tcp")
        elif config == "haproxy-tcp-splice":
            text = legacy_haproxy_config(frontend, source_port, stats, 1, "tcp",
                                         "    option splice-auto\n")
        elif config == "haproxy-http-splice":
            text = legacy_haproxy_config(frontend, source_port, stats, 1, "http",
                                         "    option splice-auto\n")
        elif config == "haproxy-unix":
            text = tuned_haproxy_config(frontend, _unix_path(work, config), stats, connections)
        else:
            text = tuned_haproxy_config(frontend, source_port, stats, connections)
            if config == "haproxy-tuned-pe":
                text = text.replace("    nbthread 1\n",
                                    "    nbthread 1\n    tune.maxpollevents 1024\n")
        return start_haproxy(text, frontend, stats, work, config)
    if config == "toxiproxy":
        return start_toxiproxy(source_port, work, config, None)
    if config == "toxiproxy-1p":
        return start_toxiproxy(source_port, work, config, 1)
    raise ValueError(config)


def measure(config: str, connections: int, messages: int, work: Path,
            sources: list[str]) -> dict[str, Any]:
    env = dict(os.environ, BENCH_UNIX_SOCKET=_unix_path(work, config)) \
        if config == "haproxy-unix" else None
    source = Child(_python_role("bench.wire", "source"), work / f"source-{config}.log", env=env)
    children = [source]
    try:
        port = source.read_json(time.monotonic() + 15)["port"]
        hop = build(config, port, work, connections)
        children += hop.children
        sink = Child(_python_role("bench.wire", "floor-sink"), work / f"sink-{config}.log")
        children.append(sink)
        sink.send({"host": "127.0.0.1", "port": hop.port, "count": connections,
                   "sources": sources})
        got = sink.read_json(time.monotonic() + 180)["connected"]
        if got != connections:
            raise BenchError(f"{config}: {got} of {connections} connected")
        time.sleep(1.0)
        procs: dict[str, int] = {"source": source.pid, "sink": sink.pid}
        for i, child in enumerate(hop.children):
            procs[f"hop{i}"] = child.pid
        samples: dict[str, list[float]] = {k: [] for k in procs}
        for _n in range(messages):
            before = {k: cpu_ns(pid) for k, pid in procs.items()}
            sink.send({"cmd": "expect", "frames": connections})
            source.send({"cmd": "send"})
            source.read_json(time.monotonic() + 30)
            sink.read_json(time.monotonic() + 60)
            after = {k: cpu_ns(pid) for k, pid in procs.items()}
            for k in procs:
                samples[k].append((after[k] - before[k]) / 1000 / connections)
            time.sleep(0.05)
        return {k: statistics.median(v) for k, v in samples.items()}
    finally:
        for child in reversed(children):
            child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    sources = [f"127.0.0.{i}" for i in range(2, 2 + max(1, args.connections // 20000 + 1))]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="bench-hops-") as tmp:
        work = Path(tmp)
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for config in order:
                r = measure(config, args.connections, args.messages, work, sources)
                results[config].append(r)
                print(f"round {rnd + 1} {config}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in r.items()) + " µs/delivery", flush=True)
    summary: dict[str, Any] = {}
    for config, rounds in results.items():
        keys = rounds[0].keys()
        summary[config] = {k: statistics.median(r[k] for r in rounds) for k in keys}
    direct = summary.get("direct", {})
    print("\nmedian µs of CPU per delivered frame (per process), "
          f"{args.connections} connections, {args.messages} messages x {args.rounds} rounds")
    print(f"{'config':16} {'source':>8} {'hop':>8} {'sink':>8} {'hop/(direct src+sink)':>22}")
    for config, r in summary.items():
        hop = sum(v for k, v in r.items() if k.startswith("hop"))
        base = direct.get("source", 0) + direct.get("sink", 0)
        ratio = f"{hop / base:.2f}" if base and hop else "—"
        print(f"{config:16} {r['source']:8.2f} {hop:8.2f} {r['sink']:8.2f} {ratio:>22}")
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)},
                                         "rounds": results, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
