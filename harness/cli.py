"""``turnout``: run experiments headless, open the TUI, re-check a run folder.

    turnout run FILE [--out DIR] [--no-recovery] [--plugin-off] [--seed N] [--scale F]
                     [--server NAME]
                     [--target URL --app-id ID --app-key KEY]   (secret: TURNOUT_APP_SECRET)
    turnout check RUN_DIR            re-judge a run folder's history (the live run's verdict)
    turnout capacity FILE [--p99-ms 250] [--max-viewers N] [--resolution N] [--out DIR]
                          [--server NAME]
                                     the largest audience the file's pattern holds here
    turnout tui [RUN_DIR]            the Textual front end (see tui/)

Exit codes of ``run`` and ``check``: 0 pass, 1 an invariant was violated, 2 the harness could
not run (the message names what was missing).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import checker
from .experiment import ExperimentError, load_experiment
from .procs import cancel_on_signals
from .render import fault_recovery_text, render_markdown
from .runner import EXIT_ERROR, RunOptions, RunResult, prepare, run_experiment
from .servers import SERVERS

__all__ = ["main"]

console = Console(stderr=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment headless")
    run.add_argument("file", type=Path, help="experiment TOML file (see docs/experiments.md)")
    run.add_argument("--out", type=Path, help="run folder (default runs/<time>-<name>/)")
    run.add_argument("--no-recovery", action="store_true",
                     help="negative control: nodes run with history off (drops expected)")
    run.add_argument("--plugin-off", action="store_true",
                     help="control of [[client_groups]]: pusher-js without @turnout/pusher-resume "
                     "(drops expected where the plugin resumes)")
    run.add_argument("--no-reaper", action="store_true",
                     help="presence negative control: nodes run without the reaper (ghost "
                     "members expected after a node kill)")
    run.add_argument("--seed", type=int, help="seed for every random choice")
    run.add_argument("--scale", type=float, default=1.0, help="multiply client counts")
    run.add_argument("--target", help="external Pusher-protocol endpoint (ws:// or http://) "
                     "instead of a local cluster; only client-side faults are allowed")
    run.add_argument("--server", choices=sorted(SERVERS),
                     help="Pusher server the local cluster's nodes run (default: the "
                     "experiment's cluster.server, turnout); see docs/peers.md")
    run.add_argument("--app-id", default="1")
    run.add_argument("--app-key", default="turnout-key")
    # The secret of a --target's app: from the environment (a flag is visible in ps).
    run.add_argument("--app-secret", default=os.environ.get("TURNOUT_APP_SECRET")
                     or "turnout-secret", help="prefer TURNOUT_APP_SECRET in the environment")
    run.add_argument("-v", "--verbose", action="store_true")
    check = sub.add_parser("check", help="re-run the checker on a run folder")
    check.add_argument("run_dir", type=Path)
    capacity = sub.add_parser(
        "capacity", help="bisect the viewer count to the largest the file's pattern holds")
    capacity.add_argument("file", type=Path, help="experiment TOML file")
    capacity.add_argument("--p99-ms", type=float, default=250.0,
                          help="p99 target in the steady and settle phases (default 250)")
    capacity.add_argument("--max-viewers", type=int,
                          help="largest count tried (default: the file's clients.count)")
    capacity.add_argument("--resolution", type=int,
                          help="stop when the interval is this narrow (default max/20)")
    capacity.add_argument("--out", type=Path, help="folder for capacity.json, capacity.md and "
                          "trials/ (default runs/<time>-<name>-capacity); an existing one is "
                          "resumed")
    capacity.add_argument("--seed", type=int)
    capacity.add_argument("--server", choices=sorted(SERVERS),
                          help="Pusher server the trials' nodes run (default: the file's)")
    capacity.add_argument("--steady-s", type=float, default=30.0, help="trial steady phase")
    capacity.add_argument("--faults-s", type=float, default=60.0,
                          help="trial fault window (the file's faults are squeezed into it)")
    capacity.add_argument("--settle-s", type=float, default=30.0, help="trial settle phase")
    tui = sub.add_parser("tui", help="the interactive Textual front end")
    tui.add_argument("path", nargs="?", type=Path, help="a run folder to open or attach to")
    return parser


class _Progress:
    """Live progress from the run's event stream: a rich table on a terminal, lines in CI."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.phase = "setup"
        self.status: dict[str, Any] = {}
        self.faults: list[str] = []
        self.interactive = console.is_terminal
        self._last_line = 0.0

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "phase":
            self.phase = event["phase"]
            console.log(f"[bold]{self.name}[/]: phase [cyan]{self.phase}[/]")
        elif kind == "status":
            self.status = event
            if not self.interactive and event["t"] - self._last_line >= 10:
                self._last_line = event["t"]
                fleet = event.get("fleet", {})
                pub = event.get("publisher", {})
                p99 = fleet.get("latency_p99_ms")
                console.log(f"t={event['t']:.0f}s {self.phase}: clients "
                            f"{fleet.get('connected', 0)}/{fleet.get('clients', 0)} connected, "
                            f"{fleet.get('delivered', 0)} delivered"
                            + (f" (p99 {p99:.0f} ms)" if p99 is not None else "")
                            + f", published {pub.get('ok', 0)} ok/"
                            f"{pub.get('indeterminate', 0)} unknown")
        elif kind == "fault_skipped":
            text = f"skipped {event.get('fault_id')}: {event.get('kind')} — {event.get('reason')}"
            self.faults.append(f"t={event['t']:.0f}s {text}")
            console.log("[yellow]" + text)
        elif kind in ("fault", "heal", "fault_error"):
            text = (f"{kind} {event.get('fault_id')}: {event.get('kind')} "
                    f"{event.get('resolved') or event.get('target')}")
            if kind == "fault_error":
                text += f" — {event.get('error')}"
            self.faults.append(f"t={event['t']:.0f}s {text}")
            console.log(("[red]" if kind == "fault_error" else "[yellow]") + text)
        elif kind == "log":
            console.log(("[red]" if event.get("level") == "error" else "") + event["message"])

    def render(self) -> Table:
        table = Table(title=f"{self.name} — {self.phase}", expand=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        fleet = self.status.get("fleet", {})
        pub = self.status.get("publisher", {})
        table.add_row("elapsed", f"{self.status.get('t', 0):.0f} s")
        table.add_row("clients connected", f"{fleet.get('connected', 0)}/{fleet.get('clients', 0)}")
        table.add_row("delivered", str(fleet.get("delivered", 0)))
        table.add_row("reconnects", str(fleet.get("reconnects", 0)))
        p99 = fleet.get("latency_p99_ms")
        table.add_row("latency p99 (live)", f"{p99:.0f} ms" if p99 is not None else "—")
        table.add_row("published ok / failed / unknown",
                      f"{pub.get('ok', 0)} / {pub.get('failed', 0)} / "
                      f"{pub.get('indeterminate', 0)}")
        for name, node in self.status.get("nodes", {}).items():
            conns = node.get("connections")
            table.add_row(name, f"{node.get('state')}"
                          + (f", {int(conns)} conns" if conns is not None else ""))
        for line in self.faults[-4:]:
            table.add_row("fault", line)
        return table


def verdict_table(result: RunResult) -> Table:
    report = result.report
    colour = {"pass": "green", "fail": "red"}.get(report.verdict, "yellow")
    table = Table(title=f"verdict: [{colour}]{report.verdict.upper()}[/]  ({result.run_dir})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("published", "indeterminate", "owed", "delivered", "lost", "duplicated",
                "reordered", "unexpected"):
        value = report.totals.get(key) if isinstance(report.totals, dict) else None
        if value is None:
            continue
        bad = key in ("lost", "duplicated", "reordered", "unexpected") and value
        table.add_row(key, f"[red]{value}[/]" if bad else str(value))
    if len(report.groups) > 1:  # the fleet next to real clients: where the loss is
        for name, group in report.groups.items():
            lost = group["lost"]
            text = (f"{group['clients']} clients, {lost} lost"
                    + (f" in {group['clients_losing']}" if lost else ""))
            table.add_row(f"group {name}", f"[red]{text}[/]" if lost else text)
    for key in ("p50", "p99", "max"):
        value = report.latency_ms.get(key) if report.latency_ms else None
        if value is not None:
            table.add_row(f"latency {key}", f"{value:.1f} ms")
    for phase, lat in report.latency_by_phase.items():
        if lat.get("p99") is not None:
            table.add_row(f"latency p99 in {phase}", f"{lat['p99']:.1f} ms")
    for fault in report.faults:
        table.add_row(f"{fault.fault_id} {fault.fault} {fault.target}",
                      fault_recovery_text(fault))
    for violation in report.violations:
        table.add_row("[red]violation[/]", violation)
    note = checker.positions_note(report.recording)
    if note:
        table.add_row("[yellow]positions[/]", note)
    if report.error:
        table.add_row("[yellow]error[/]", report.error)
    return table


def cpu_table(cpu: dict[str, Any]) -> Table:
    """Where the CPU went (report.json's ``cpu``), as printed at the end of ``turnout run``."""
    table = Table(title=f"where the CPU went: {cpu.get('window')}, {cpu.get('wall_s')} s, "
                        f"{cpu.get('deliveries_per_s', 0):,.0f} deliveries/s")
    for column in ("component", "CPU s", "share", "cores", "µs/delivery"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, row in cpu.get("components", {}).items():
        per = row.get("us_per_delivery")
        table.add_row(name, f"{row['cpu_s']:.1f}", f"{row['share_pct']:.1f} %",
                      f"{row['cores']:.2f}", "—" if per is None else f"{per:.1f}")
    table.add_row("run total", f"{cpu.get('cpu_s', 0):.1f}", "100 %",
                  f"{cpu.get('run_cores', 0):.2f}",
                  "—" if cpu.get("us_per_delivery") is None else f"{cpu['us_per_delivery']:.1f}")
    return table


def _run(args: argparse.Namespace) -> int:
    try:
        experiment = load_experiment(args.file)
    except (ExperimentError, OSError) as exc:
        console.print(f"[red]turnout: error:[/] {exc}")
        return EXIT_ERROR
    if args.server and args.target:
        console.print("[red]turnout: error:[/] --server chooses the local cluster's nodes; "
                      "--target runs against an external endpoint instead: give one of them")
        return EXIT_ERROR
    options = RunOptions(out_dir=args.out, no_recovery=args.no_recovery,
                         plugin_off=args.plugin_off, no_reaper=args.no_reaper,
                         seed=args.seed, server=args.server,
                         scale=args.scale, target_url=args.target, app_id=args.app_id,
                         app_key=args.app_key, app_secret=args.app_secret)
    try:
        prepare(experiment, options)  # refuses an override the file cannot take
    except ExperimentError as exc:
        console.print(f"[red]turnout: error:[/] {exc}")
        return EXIT_ERROR
    progress = _Progress(experiment.name)
    result: RunResult | None = None

    async def main() -> None:
        nonlocal result
        async with trio.open_nursery() as nursery:
            await nursery.start(cancel_on_signals, nursery.cancel_scope)
            if progress.interactive:
                with Live(progress.render(), console=console, refresh_per_second=2) as live:
                    async def refresh() -> None:
                        while True:
                            live.update(progress.render())
                            await trio.sleep(0.5)
                    nursery.start_soon(refresh)
                    result = await run_experiment(experiment, options, progress.on_event,
                                                  source=args.file)
            else:
                result = await run_experiment(experiment, options, progress.on_event,
                                              source=args.file)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process of the run was stopped[/]")
        return 130
    if result is None:
        console.print("[yellow]run stopped before it finished: every process was stopped[/]")
        return 130
    console.print(verdict_table(result))
    if result.cpu:
        console.print(cpu_table(result.cpu))
    return result.exit_code


def invariants_of(experiment_doc: dict[str, Any]) -> checker.Invariants:
    """The invariants a run was judged by (experiment.json holds the effective experiment:
    after --scale and --no-recovery)."""
    raw = dict(experiment_doc.get("invariants") or {})
    if "p99_phases" in raw:
        raw["p99_phases"] = tuple(raw["p99_phases"])
    return checker.Invariants(**raw)


def _check(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    try:
        experiment_doc = orjson.loads((run_dir / "experiment.json").read_bytes())
        invariants = invariants_of(experiment_doc)
        report = checker.check_run_dir(run_dir, invariants)
    except (OSError, ValueError, TypeError) as exc:
        console.print(f"[red]turnout: error:[/] {exc}")
        return EXIT_ERROR
    live: dict[str, Any] = {}
    try:
        live = orjson.loads((run_dir / "report.json").read_bytes())
    except (OSError, ValueError):
        pass
    name = str(experiment_doc.get("name", "run"))
    print(render_markdown(report, name, live.get("cpu") or None))
    if live.get("verdict") not in (None, "error"):
        same = live["verdict"] == report.verdict and live.get("totals") == dict(report.totals)
        console.print(("[green]" if same else "[red]")
                      + f"re-judged: {report.verdict}; the live run's verdict: "
                      f"{live['verdict']}" + ("" if same else " (they differ)"))
    return {"pass": 0, "fail": 1}.get(report.verdict, EXIT_ERROR)


def _capacity(args: argparse.Namespace) -> int:
    import time as _time

    from .capacity import CapacitySearch, TrialShape

    try:
        experiment = load_experiment(args.file)
    except (ExperimentError, OSError) as exc:
        console.print(f"[red]turnout: error:[/] {exc}")
        return EXIT_ERROR
    max_viewers = args.max_viewers or experiment.clients.count
    out = args.out or Path("runs") / f"{_time.strftime('%Y%m%d-%H%M%S')}-{experiment.name}-capacity"

    async def run_trial(trial: Any, run_dir: Path) -> dict[str, Any]:
        import shutil

        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted trial: run it again
        progress = _Progress(trial.name)
        progress.interactive = False
        result = await run_experiment(trial, RunOptions(out_dir=run_dir, seed=args.seed,
                                                        server=args.server),
                                      progress.on_event)
        return dict(orjson.loads((result.run_dir / "report.json").read_bytes()))

    search = CapacitySearch(experiment, out, p99_ms=args.p99_ms, max_viewers=max_viewers,
                            resolution=args.resolution or max(500, max_viewers // 20),
                            file=str(args.file), run_trial=run_trial,
                            echo=lambda line: console.print(f"[bold]trial[/] {line}"),
                            shape=TrialShape(steady_s=args.steady_s, faults_s=args.faults_s,
                                             settle_s=args.settle_s))
    answer: int | None = None
    finished = False

    async def main() -> None:
        nonlocal answer, finished
        async with trio.open_nursery() as nursery:
            await nursery.start(cancel_on_signals, nursery.cancel_scope)
            answer, _ = await search.run()
            finished = True
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        finished = False
    if not finished:
        console.print(f"[yellow]interrupted; trials so far are in {out}/capacity.json[/]")
        return 130
    print((out / "capacity.md").read_text())
    console.print(f"capacity: {answer:,} viewers" if answer else
                  "capacity: no trial held", style="bold")
    return 0 if answer else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "run":
        if any(a == "--app-secret" or a.startswith("--app-secret=")
               for a in (sys.argv[1:] if argv is None else argv)):
            console.print("[yellow]turnout: warning:[/] --app-secret on the command line is "
                          "visible to every local user (ps); set TURNOUT_APP_SECRET instead")
        return _run(args)
    if args.command == "check":
        return _check(args)
    if args.command == "capacity":
        return _capacity(args)
    if args.command == "tui":
        try:
            from tui.app import run_tui
        except ImportError as exc:
            console.print(f"[red]turnout: error:[/] the TUI is not available: {exc}")
            return EXIT_ERROR
        return run_tui(args.path)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
