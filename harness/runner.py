"""One experiment, headless: cluster up, workload, faults on schedule, heal, settle, drain,
check, report. The TUI drives the same engine (through ``run_experiment``'s event stream and
control socket), so a run started there writes the same run folder.

Run folder (``runs/<time>-<name>/`` by default)::

    experiment.toml      the file as given (plus experiment.json: the parsed, scaled form)
    history.jsonl        every op of every process, merged by time (the checker's input; the
                         fleet's deliveries are in its compact record, see harness.recording)
    parts/               the per-process history files it was merged from
    events.jsonl         the live event stream (harness.events)
    report.json          verdict, totals, latency (overall, per phase, per fault), faults with
                         stale windows and recovery times, violations, where the CPU went
    report.md, junit.xml the same for humans and CI
    logs/                every process's output (redis, toxiproxy, haproxy, nodes, fleet,
                         publisher)

Which client-side links get a Toxiproxy hop is decided here from the experiment's faults
(:func:`proxied_links`): every update crosses them, so a hop no fault needs is pure cost.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import trio

from . import checker
from .control_server import serve_control
from .cpu import CpuLedger
from .events import EventLog
from .experiment import Experiment, ExperimentError, FaultSpec
from .faults import FAULTS, FaultContext
from .fleet_control import FleetControl, plan_clients, source_addresses
from .history import HARNESS, HistoryWriter
from .nemesis import Nemesis
from .procs import HarnessSetupError, ProcessFailed, Supervisor, open_supervisor
from .publisher import PublisherProcess, PublisherSpec
from .real_clients import RealClients
from .render import render_junit, render_markdown
from .servers import server_adapter
from .topology import Topology, TopologySpec, run_topology

log = logging.getLogger("turnout.runner")

__all__ = ["RunOptions", "RunResult", "merge_history_files", "proxied_links", "run_experiment"]

#: Fault kinds that act through Toxiproxy on the link their target names.
LINK_FAULTS = frozenset({"latency", "bandwidth", "reset_peer", "slicer", "partition_redis"})

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path | None = None
    runs_root: Path = Path("runs")
    no_recovery: bool = False
    #: every [[client_groups]] entry without @turnout/pusher-resume (the plugin's control)
    plugin_off: bool = False
    no_reaper: bool = False
    seed: int | None = None
    scale: float = 1.0
    # External Pusher-protocol endpoint (--target): no local cluster.
    target_url: str | None = None
    #: Server the local cluster's nodes run (harness.servers); None: the experiment's
    #: cluster.server.
    server: str | None = None
    app_id: str = "1"
    app_key: str = "turnout-key"
    app_secret: str = "turnout-secret"
    subscribe_timeout_s: float = 120.0


@dataclass
class RunResult:
    run_dir: Path
    report: checker.Report
    exit_code: int
    cpu: dict[str, Any] | None = None


def proxied_links(faults: Sequence[FaultSpec], proxies: str = "auto"
                  ) -> tuple[bool | tuple[int, ...], bool]:
    """(clients->lb proxies, lb->node proxies) the run needs: every link with ``proxies =
    "all"``, else only those a scheduled link fault targets. Client proxies are per lane: True
    (every lane), False, or the lanes a ``clients->lb[i]`` target names."""
    if proxies == "all":
        return True, True
    clients: bool | set[int] = False
    lb = False
    for fault in faults:
        if fault.kind not in LINK_FAULTS:
            continue
        target = fault.target
        if target in ("clients", "clients->lb"):
            clients = True
        elif target.startswith("clients->lb["):
            if clients is not True:
                lanes = clients if isinstance(clients, set) else set()
                lanes.add(int(target[len("clients->lb["):-1]))
                clients = lanes
        elif target == "lb" or (target.startswith("lb") and "->" in target):
            lb = True
    if isinstance(clients, set):
        return tuple(sorted(clients)), lb
    return clients, lb


def merge_history_files(paths: Sequence[Path], out: Path) -> int:
    """Merge per-process history files into one, by time (stable: equal times keep file order
    and, within a file, line order). Streams: each file is in time order as its one writer
    appended it, so memory stays flat whatever the size. Returns the number of ops."""

    def lines(index: int, path: Path) -> Iterator[tuple[float, int, int, bytes]]:
        with open(path, "rb") as fh:
            for n, line in enumerate(fh):
                if not line.endswith(b"\n"):
                    return  # a torn final line from a killed writer
                if line.strip():
                    yield float(orjson.loads(line)["time"]), index, n, line

    count = 0
    with open(out, "wb") as fh:
        for _t, _i, _n, line in heapq.merge(*(lines(i, p) for i, p in enumerate(paths))):
            fh.write(line)
            count += 1
    return count


def _run_dir(options: RunOptions, name: str) -> Path:
    if options.out_dir is not None:
        path = options.out_dir
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = options.runs_root / f"{stamp}-{name}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = options.runs_root / f"{stamp}-{name}-{suffix}"
    (path / "parts").mkdir(parents=True, exist_ok=True)
    return path.resolve()


def prepare(experiment: Experiment, options: RunOptions) -> Experiment:
    if options.scale != 1.0:
        experiment = experiment.scaled(options.scale)
    if options.no_recovery:
        experiment = experiment.negative_control()
    if options.plugin_off:
        experiment = experiment.plugin_off()
    if options.no_reaper:
        experiment = experiment.presence_negative_control()
    if (options.server not in (None, "turnout") and options.target_url is None
            and experiment.cluster.balancer == "kernel"):
        raise ExperimentError(experiment.source or experiment.name, "cluster.balancer",
                              f"--server {options.server} needs 'haproxy' (only turnout nodes "
                              "share a port), got 'kernel'")
    if options.server is not None and options.target_url is None:
        # --server overrides cluster.server: experiment.json says what really ran.
        # (replace re-validates it: the Cluster schema's Literal of known servers)
        experiment = replace(experiment, cluster=replace(experiment.cluster,
                                                         server=options.server))  # type: ignore[arg-type]
    return experiment


def _ws_entry(base: str, key: str) -> str:
    base = base.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return f"{base}/app/{key}?protocol=7&client=turnout-harness&version=1"


async def _node_metrics(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    try:
        text = (await client.get(f"{url}/metrics", timeout=0.5)).text
    except httpx.HTTPError:
        return {}
    wanted = {"turnout_connections", "turnout_redis_link_up", "turnout_rss_bytes",
              "turnout_subscriptions", "turnout_events_delivered_total",
              "turnout_slow_consumer_disconnects_total", "turnout_gaps_detected_total",
              "turnout_catchups_total", "turnout_unrecoverable_gaps_total",
              "turnout_connections_opened_total", "turnout_redis_link_changes_total",
              "turnout_event_loop_lag_seconds", "turnout_event_loop_lag_max_seconds"}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            try:
                out[name.removeprefix("turnout_")] = float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return out


def _run_pids(topology: Topology | None, *supervisors: Supervisor) -> dict[str, int | None]:
    pids: dict[str, int | None] = {"harness": os.getpid()}
    if topology is not None:
        pids.update({name: p.pid for name, p in topology.supervisor.processes.items()})
    for supervisor in supervisors:
        pids.update({name: p.pid for name, p in supervisor.processes.items()})
    return pids


async def _status_loop(events: EventLog, topology: Topology | None, fleet: FleetControl,
                       publisher: PublisherProcess, nemesis: Nemesis, cpu: CpuLedger,
                       supervisors: Sequence[Supervisor]) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            cpu.sample(_run_pids(topology, *supervisors))
            cpu.deliveries = fleet.totals().delivered
            nodes: dict[str, Any] = {}
            links: dict[str, Any] = {}
            if topology is not None:
                for name, node in topology.nodes.items():
                    has_metrics = node.adapter.metrics_url(node.port) is not None
                    metrics = await _node_metrics(client, node.url) \
                        if node.state.value == "up" and has_metrics else {}
                    stats = node.process.statistics()
                    nodes[name] = {"state": node.state.value, "pid": node.pid,
                                   "rss_bytes": stats.rss_bytes, **metrics}
                for link in sorted(topology.link_names):
                    links[link] = {"toxics": []}
                for entry in nemesis.active.values():
                    for link in (entry.fault.resolved or "").split(","):
                        if link in links:
                            links[link]["toxics"].append(entry.kind)
                redis = topology.redis
                nodes["redis"] = {"state": redis.state.value if redis is not None else "?"}
            events.emit("status", nodes=nodes, links=links, fleet=fleet.totals().to_dict(),
                        publisher={"ok": publisher.ok, "failed": publisher.failed,
                                   "indeterminate": publisher.indeterminate},
                        faults=[{"fault_id": f.fault_id, "kind": f.kind, "target": f.target}
                                for f in nemesis.active.values()],
                        cpu=cpu.so_far())
            await trio.sleep(1.0)


async def run_experiment(experiment: Experiment, options: RunOptions,
                         events_listener: Any = None, source: Path | None = None) -> RunResult:
    """Run ``experiment``; never raises for a harness failure: the report says ``error``."""
    experiment = prepare(experiment, options)
    run_dir = _run_dir(options, experiment.name)
    if source is not None:
        shutil.copyfile(source, run_dir / "experiment.toml")
    seed = options.seed if options.seed is not None else experiment.seed
    events = EventLog(run_dir / "events.jsonl")
    if events_listener is not None:
        events.listeners.append(events_listener)
    (run_dir / "experiment.json").write_bytes(orjson.dumps(experiment.to_dict(), default=str,
                                                           option=orjson.OPT_INDENT_2))
    history = HistoryWriter(run_dir / "parts" / "history-harness.jsonl")
    # One time base: the history's first op is the events' zero, so report.json's times and
    # events.jsonl's t both count seconds since the run started.
    history.record(HARNESS, "info", "run", {"name": experiment.name}, time=events.t0)
    server = None if options.target_url else experiment.cluster.server
    events.emit("run", name=experiment.name, run_dir=str(run_dir), seed=seed,
                target=options.target_url, server=server, experiment=experiment.to_dict())
    error: str | None = None
    # Each node's counters at the end of the run (from /metrics): evidence that a fault bit,
    # e.g. slow-consumer disconnects. A node restarted during the run counts from its restart.
    cluster_metrics: dict[str, dict[str, Any]] = {}
    stopped = True  # until _run returns or fails: a cancel (signal) leaves it set
    cpu = CpuLedger()
    try:
        await _run(experiment, options, run_dir, seed, events, history, cluster_metrics, cpu)
        stopped = False
    except (HarnessSetupError, ProcessFailed, OSError, TimeoutError, ValueError,
            httpx.HTTPError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    except BaseExceptionGroup as group:
        error = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(group))[:2000]
        if not error:
            raise
    finally:
        if error:  # empty: only cancellations, re-raised above (stopped stays set)
            stopped = False
            log.error("run could not complete: %s", error)
            events.log(error, level="error")
        history.close()
        cpu.finish(trio.current_time())
        if stopped:
            events.emit("stopped", reason="the run was cancelled (signal or Ctrl-C) before "
                                          "its check: no verdict")
            events.close()
    events.phase("check", waits_for="the checker reading the merged history")
    parts = sorted((run_dir / "parts").glob("history-*.jsonl"))
    merge_history_files(parts, run_dir / "history.jsonl")
    if error is not None:
        report = checker.error_report(error)
    else:
        report = checker.check_run_dir(run_dir, experiment.invariants)
    exit_code = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(report.verdict, EXIT_ERROR)
    cpu_table = cpu.report_table()
    document = {**report.to_dict(), "experiment": experiment.name, "run_dir": str(run_dir),
                "seed": seed, "target": options.target_url, "exit_code": exit_code,
                "server": None if server is None else server_adapter(server).describe(),
                "cluster": cluster_metrics, "cpu": cpu_table,
                "cpu_whole_run": cpu.table("setup", "end")}
    (run_dir / "report.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (run_dir / "report.md").write_text(render_markdown(report, experiment.name, cpu_table))
    (run_dir / "junit.xml").write_text(render_junit(report, experiment.name))
    events.emit("verdict", report=document, exit_code=exit_code)
    events.close()
    return RunResult(run_dir, report, exit_code, cpu_table)


def _host_port(ws_entry: str) -> tuple[str, int]:
    parts = urlsplit(ws_entry)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def _final_read_real(real: RealClients, events: EventLog) -> None:
    unfinished = await real.final_read(timeout=120)
    if unfinished:
        shown = ", ".join(unfinished[:10]) + (", …" if len(unfinished) > 10 else "")
        events.log(f"{len(unfinished)} real clients did not finish their final read: {shown}",
                   "error")


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _leaves(exc)
        elif not isinstance(exc, trio.Cancelled):
            out.append(exc)
    return out


async def _run(experiment: Experiment, options: RunOptions, run_dir: Path, seed: int,
               events: EventLog, history: HistoryWriter,
               cluster_metrics: dict[str, dict[str, Any]], cpu: CpuLedger) -> None:
    cluster, clients_cfg, workload, phases = (experiment.cluster, experiment.clients,
                                              experiment.workload, experiment.phases)
    channels = list(workload.channel_names)
    storm = max((int(f.params.get("clients", 0) or 0) for f in experiment.faults
                 if f.kind == "connection_storm"), default=0)
    rng = random.Random(seed)
    app = (options.app_id, options.app_key, options.app_secret)
    if options.target_url is not None:
        refused = [f"{f.fault_id} {f.kind}" for f in experiment.faults
                   if FAULTS[f.kind].needs_cluster]
        if refused:
            raise ValueError(
                f"against an external --target only client-side faults can run; these need "
                f"control of the cluster's processes and proxies: {', '.join(refused)}")
    async with trio.open_nursery() as root:
        topology: Topology | None = None
        sources = tuple(clients_cfg.source_addresses)  # () lets the fleet pick its own
        if options.target_url is None:
            client_proxies, lb_proxies = proxied_links(experiment.faults, cluster.proxies)
            delayed: bool | tuple[int, ...] = False
            if cluster.client_link_faults == "netfilter":
                delayed, client_proxies = client_proxies, False
            spec = TopologySpec(
                nodes=cluster.nodes, clients=clients_cfg.count + storm,
                history_size=cluster.effective_history_size,
                history_ttl_s=cluster.history_ttl_s,
                activity_timeout_s=cluster.activity_timeout_s,
                drain_grace_s=cluster.drain_grace_s, max_rss_mb=int(cluster.max_rss_mb),
                outbound_queue_bytes=cluster.outbound_queue_bytes,
                socket_send_buffer=cluster.socket_send_buffer_bytes,
                app_id=app[0], app_key=app[1], app_secret=app[2],
                key_prefix=f"turnout-{seed}", toxiproxy_seed=seed,
                reap_dead_nodes=cluster.reaper,
                client_proxies=client_proxies,
                lb_proxies=lb_proxies and cluster.balancer == "haproxy",
                balancer=cluster.balancer, server=cluster.server)
            if delayed is not False:
                sources = sources or source_addresses(clients_cfg.count + storm,
                                                      lanes=spec.lanes)
                lanes = tuple(range(spec.lanes)) if delayed is True else delayed
                spec = replace(spec, client_sources=sources, delay_lanes=lanes)
            events.phase("setup", waits_for=(
                f"Redis, Toxiproxy, HAProxy and {cluster.nodes} nodes to be ready"
                if cluster.balancer == "haproxy" else
                f"Redis, Toxiproxy and {cluster.nodes} nodes on a shared port to be ready"))
            topology = await root.start(run_topology, spec, run_dir)
            ws_entries = [_ws_entry(u, app[1]) for u in topology.ws_urls]
            api_url = topology.http_api_url
        else:
            ws_entries = [_ws_entry(options.target_url, app[1])]
            api_url = options.target_url.replace("ws://", "http://").replace("wss://",
                                                                             "https://")
        async with open_supervisor(run_dir / "logs") as fleet_supervisor:
            fleet = FleetControl(run_dir, clients_cfg.processes, seed=seed)
            await root.start(fleet.serve)
            plan = plan_clients(clients_cfg.count, channels, clients_cfg.channels_per_client,
                                presence=workload.presence_names)
            sample = random.Random(seed).sample(
                [c.id for c in plan], min(clients_cfg.full_history, len(plan)))
            await fleet.start_workers(
                fleet_supervisor, entries=ws_entries, clients=plan,
                history_dir=run_dir / "parts", storm_capacity=storm,
                sources=sources, app_secret=app[2],
                spec_kwargs={
                    "app_key": app[1],
                    "connect_rate_per_s": clients_cfg.connect_rate_per_s,
                    "backoff_min_s": clients_cfg.reconnect_backoff_min_s,
                    "backoff_max_s": clients_cfg.reconnect_backoff_max_s,
                    "resume": clients_cfg.resume,
                    "silence_ping_s": clients_cfg.ping_after_silence_s,
                    "pong_timeout_s": clients_cfg.pong_timeout_s,
                    "full_history": tuple(sorted(sample)),
                })
            expected = sum(len(c.channels) for c in plan)
            supervisors = [fleet_supervisor]
            real = RealClients(run_dir, experiment.client_groups, channels,
                               [_host_port(u) for u in ws_entries],
                               app_key=app[1], app_secret=app[2],
                               event=PublisherSpec.event_name)

            def sample_cpu(label: str) -> None:
                cpu.sample(_run_pids(topology, *supervisors))
                cpu.mark(label, trio.current_time(), fleet.totals().delivered)

            sample_cpu("setup")
            # The ramp itself takes count / rate; the allowance comes on top of it.
            subscribe_within = (options.subscribe_timeout_s
                                + clients_cfg.count / clients_cfg.connect_rate_per_s)
            events.wait(f"{clients_cfg.count} clients to connect and make {expected} "
                        "subscriptions", timeout_s=round(subscribe_within, 1),
                        expected_s=round(clients_cfg.count / clients_cfg.connect_rate_per_s, 1))
            if not await fleet.wait_subscribed(expected, subscribe_within):
                raise TimeoutError(f"only {fleet.totals().subscribed} of {expected} "
                                   f"subscriptions succeeded within {subscribe_within:.0f} s")
            if real.tools:
                await root.start(real.serve)
                await real.start(fleet_supervisor)
                if not await real.wait_subscribed(options.subscribe_timeout_s):
                    raise TimeoutError(f"only {real.totals()['subscribed']} subscriptions of "
                                       f"the {real.viewer_count} real clients succeeded within "
                                       f"{options.subscribe_timeout_s:.0f} s")
            publisher = PublisherProcess(PublisherSpec(
                base_url=api_url, app_id=app[0], app_key=app[1], app_secret=app[2],
                channels=tuple(channels), interval_s=workload.publish_interval_s,
                jitter_s=workload.interval_jitter_s, payload_bytes=workload.payload_bytes,
                timeout_s=workload.publish_timeout_s, retries=workload.publish_retries,
                seed=seed, history_path=str(run_dir / "parts" / "history-publisher.jsonl")),
                run_dir)
            ctx = FaultContext(topology=topology, rng=rng,
                               stall_clients=fleet.stall,
                               storm=lambda n, d: fleet.storm(n, d, channels[0]))
            async with trio.open_nursery() as work:
                nemesis = Nemesis(ctx, history, events, work)
                work.start_soon(_status_loop, events, topology, fleet, publisher, nemesis, cpu,
                                supervisors)
                await work.start(serve_control, run_dir / "control.sock", nemesis, events)

                def phase(name: str, duration_s: float | None = None, waits_for: str = "",
                          timeout_s: float | None = None) -> None:
                    history.record(HARNESS, "info", "phase", {"phase": name})
                    events.phase(name, duration_s=duration_s, waits_for=waits_for or None,
                                 timeout_s=timeout_s)
                    sample_cpu(name)

                await work.start(publisher.serve, fleet_supervisor)
                phase("steady", phases.steady_s, "publishing with every client subscribed")
                await trio.sleep(phases.steady_s)
                scheduled = len(experiment.faults)
                phase("faults", phases.faults_s,
                      (f"{scheduled} scheduled faults" if scheduled else "no scheduled faults")
                      + " and faults sent by hand; then running faults to heal")
                for fault in experiment.faults:
                    nemesis.start(fault.fault_id, fault.kind, fault.target, fault.params,
                                  fault.duration_s, delay_s=fault.at_s)
                await trio.sleep(phases.faults_s)
                await nemesis.end_faults_phase(timeout_s=180)
                phase("heal", phases.heal_s, "every fault healed, every node up and in the "
                      "load balancer; then heal_s of publishing", timeout_s=60 + 30)
                nemesis.heal_all()
                with trio.move_on_after(60):
                    await nemesis.wait_idle()
                if topology is not None:
                    await topology.reset_faults()
                    for node in topology.nodes.values():
                        if node.state.value not in ("up", "starting"):
                            events.log(f"heal: restarting {node.name} ({node.state.value})")
                            await node.restart()
                    await topology.wait_lb_ready(timeout=30)
                await trio.sleep(phases.heal_s)
                phase("settle", phases.settle_s, "publishing goes on: the latency a healed "
                      "cluster delivers")
                # Publishing goes on through settle: its latency is what a healed cluster
                # delivers. It stops (every channel's last request completed) before the drain.
                await trio.sleep(phases.settle_s)
                if not await publisher.stop(workload.publish_timeout_s + 10):
                    events.log("the publisher did not stop in time", "error")
                phase("drain", None, "publishing stopped; every client's final read of what it "
                      "is owed", timeout_s=180)
                async with trio.open_nursery() as final:
                    final.start_soon(_final_read_real, real, events)
                    drained = await fleet.drain(timeout=180)
                if not drained:
                    events.log("not every fleet worker finished its final read", "error")
                sample_cpu("end")
                if topology is not None:
                    async with httpx.AsyncClient(trust_env=False) as client:
                        for name, node in topology.nodes.items():
                            if node.adapter.metrics_url(node.port) is not None:
                                cluster_metrics[name] = await _node_metrics(client, node.url)
                cluster_metrics["fleet"] = fleet.totals().to_dict()
                if real.tools:
                    cluster_metrics["real_clients"] = real.totals_by_group()
                work.cancel_scope.cancel()
        root.cancel_scope.cancel()
