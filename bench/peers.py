"""``python -m bench.peers``: every shipped experiment against turnout and the other Pusher
servers the harness can run (harness.servers), one table (docs/peers.md).

Each (experiment, server) is one ``turnout run FILE --server NAME`` into
``OUT/<server>/<experiment>``; an existing report.json there is reused, so an interrupted
sweep resumes. ``--lock PATH`` wraps each run in ``flock PATH`` (the team's heavy-job lock)
rather than holding it for the whole sweep. The table: verdict, lost, duplicated, reordered,
p50/p99, stale windows, reconnects, skipped faults, and where the CPU went (the nodes' share
and µs per delivery), per server side by side; then, where a server lost updates, which viewers
and which updates: the first viewers from the report, then every lost update with the number of
viewers that missed it, re-judged from the run's history (the report lists 200 viewers only).

    python -m bench.peers [--servers turnout,sockudo] [--only NAME,...] [--out DIR]
                          [--lock /work/team/heavy.lock] [--markdown FILE] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from harness.checks.delivery import judge_delivery
from harness.checks.model import accumulate
from harness.history import iter_history

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
#: The scale test the issue asks for beyond the CI set.
EXTRA = ("election-night-10k",)


def shipped(only: list[str] | None) -> list[Path]:
    """The experiments CI runs (ci = true), plus the 10,000-viewer scale test."""
    out = []
    for path in sorted(EXPERIMENTS.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        if (doc.get("ci", True) or path.stem in EXTRA) and (only is None or path.stem in only):
            out.append(path)
    return out


def run_one(path: Path, server: str, out: Path, lock: str | None,
            run: bool = True) -> dict[str, Any]:
    run_dir = out / server / path.stem
    report = run_dir / "report.json"
    if not report.exists() and not run:
        return {"verdict": "not run", "error": "not run (--table-only)"}
    if not report.exists():
        command = [sys.executable, "-m", "harness", "run", str(path), "--server", server,
                   "--out", str(run_dir)]
        if lock:
            command = ["flock", lock, *command]
        started = time.monotonic()
        print(f"peers: {path.stem} on {server} ...", file=sys.stderr, flush=True)
        with open(out / f"{server}-{path.stem}.log", "w") as log:
            subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                           check=False)
        print(f"peers: {path.stem} on {server}: {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
    if not report.exists():
        return {"verdict": "error", "error": f"no report (see {out}/{server}-{path.stem}.log)"}
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def _stale(report: dict[str, Any]) -> str:
    windows = 0
    worst: float | None = None
    unrecovered = 0
    for fault in report.get("faults") or []:
        stale = fault.get("stale") or {}
        windows += int(stale.get("windows") or 0)
        unrecovered += int(stale.get("unrecovered") or 0)
        if stale.get("max") is not None:
            worst = max(worst or 0.0, float(stale["max"]))
    if not windows:
        return "—"
    text = f"{windows}, max {worst:.1f} s" if worst is not None else f"{windows}"
    return text + (f", {unrecovered} unrecovered" if unrecovered else "")


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.0f}"


def _cpu(report: dict[str, Any]) -> str:
    cpu = report.get("cpu") or {}
    nodes = (cpu.get("components") or {}).get("nodes") or {}
    if not nodes:
        return "—"
    per = nodes.get("us_per_delivery")
    return (f"{nodes.get('share_pct', 0):.0f} % / "
            + ("—" if per is None else f"{per:.0f} µs"))


def row(name: str, server: str, report: dict[str, Any]) -> str:
    if report.get("verdict") in ("error", "not run"):
        why = str(report.get("error"))[:80]
        return f"| {name} | {server} | {report.get('verdict')}: {why} |" + " |" * 9
    t = report.get("totals") or {}
    lat = report.get("latency_ms") or {}
    skipped = [f"{f['fault_id']} {f['fault']}" for f in report.get("faults") or []
               if f.get("status") == "skipped"]
    positions = (report.get("recording") or {}).get("positions", "?")
    return (f"| {name} | {server} | {report.get('verdict')} | {t.get('lost', 0)} / "
            f"{t.get('owed', 0)} | {t.get('duplicated', 0)} | {t.get('reordered', 0)} | "
            f"{_ms(lat.get('p50'))} / {_ms(lat.get('p99'))} | {_stale(report)} | "
            f"{(report.get('reconnects') or {}).get('total', 0)} | {_cpu(report)} | "
            f"{positions} | {', '.join(skipped) or '—'} |")


def lost_updates(history: Path) -> list[tuple[str, str, int, float]]:
    """Every update a run lost: (channel, update id, viewers that missed it, published at s
    from the run's start), most missed first, judged from the run's history as the checker
    does (its report names the first 200 viewers only)."""
    data = accumulate((op.time, op.process, op.type, op.f, op.value)
                      for op in iter_history(history))
    delivery = judge_delivery(data)
    out = []
    for pid, viewers in delivery.lost_by_update.items():
        pub = data.pubs.get(pid)
        channel = pub.channel if pub is not None else "?"
        at = pub.invoke - data.start if pub is not None else float("nan")
        out.append((channel, pid, viewers, round(at, 1)))
    return sorted(out, key=lambda u: (-u[2], u[3]))


def losses(name: str, server: str, report: dict[str, Any],
           updates: list[tuple[str, str, int, float]] | None = None) -> list[str]:
    """Which viewers lost which updates: the report's first clients, then every lost update
    (``updates``, from :func:`lost_updates`) with how many viewers missed it."""
    lost = (report.get("totals") or {}).get("lost", 0)
    if not lost:
        return []
    groups = report.get("groups") or {}
    # clients_with_problems also counts viewers that only saw a reorder or a duplicate.
    losing = (sum(int(g.get("clients_losing") or 0) for g in groups.values()) if groups
              else report.get("clients_with_problems"))
    lines = [f"- **{name} on {server}**: {lost} (viewer, update) pairs lost by "
             f"{losing} viewers; first ones:"]
    for client in (report.get("clients") or [])[:5]:
        for channel, ids in (client.get("lost_ids") or {}).items():
            lines.append(f"  - {client['client']} {channel}: {', '.join(ids[:8])}"
                         + (" …" if len(ids) > 8 else ""))
    if updates:
        shown = ", ".join(f"{pid} on {channel} ({viewers} viewer{'' if viewers == 1 else 's'}, "
                          f"t={at:g} s)" for channel, pid, viewers, at in updates[:12])
        more = f", and {len(updates) - 12} more" if len(updates) > 12 else ""
        lines.append(f"  - {len(updates)} distinct update{'' if len(updates) == 1 else 's'} lost: "
                     f"{shown}{more}")
    return lines


HEADER = ("| experiment | server | verdict | lost / owed | dup | reord | p50 / p99 ms "
          "| stale windows | reconnects | nodes' CPU share / per delivery | positions "
          "| skipped faults |\n|---|---|---|---:|---:|---:|---:|---|---:|---:|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="turnout,sockudo")
    parser.add_argument("--only", help="comma-separated experiment names")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "peers")
    parser.add_argument("--lock", help="flock this file around each run")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: tabulate the run folders already in --out")
    args = parser.parse_args(argv)
    servers = args.servers.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, lost_lines = [HEADER], []
    for path in shipped(args.only.split(",") if args.only else None):
        for server in servers:
            report = run_one(path, server, args.out, args.lock, run=not args.table_only)
            rows.append(row(path.stem, server, report))
            history = args.out / server / path.stem / "history.jsonl"
            updates = (lost_updates(history) if (report.get("totals") or {}).get("lost")
                       and history.exists() else None)
            lost_lines += losses(path.stem, server, report, updates)
    text = "\n".join(rows) + "\n"
    if lost_lines:
        text += "\nWhere updates were lost:\n\n" + "\n".join(lost_lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
