"""Rendering a checker :class:`~harness.checker.Report` for humans and CI: report.md and
junit.xml. Kept apart from the checker, which only judges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree as ET

from harness.checker import FaultResult, Report, positions_note

__all__ = ["cpu_table_markdown", "duration_text", "fault_recovery_text", "render_junit",
           "render_markdown"]


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def duration_text(seconds: float) -> str:
    """A duration readable at any scale: "42 ms", "3.4 s"."""
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def fault_recovery_text(f: FaultResult) -> str:
    """One line on how a fault recovered: stale windows of the viewers it disconnected, or the
    catch-up after its heal. Never "0 s" for a fault that disconnected viewers."""
    if f.healed_at is None:
        return "never healed"
    stale = f.stale
    parts = []
    if stale is not None:
        if stale.get("max") is None or stale.get("unrecovered"):
            parts.append(f"{stale['viewers']} viewers disconnected, "
                         f"{stale.get('unrecovered', 0)} never recovered")
        else:
            parts.append(f"{stale['viewers']} viewers disconnected, stale p50 "
                         f"{duration_text(stale['p50'])} / p99 {duration_text(stale['p99'])} "
                         f"/ max {duration_text(stale['max'])}")
    else:
        parts.append("no viewer disconnected")
    if f.caught_up_s is None:
        parts.append(f"never caught up ({f.lost_before_heal} lost)")
    elif f.caught_up_s > 0:
        parts.append(f"last update published before the heal arrived "
                     f"{duration_text(f.caught_up_s)} after it")
    else:
        parts.append("nothing published before the heal was still outstanding at it")
    return "; ".join(parts)


def _latency_row(name: str, lat: Mapping[str, Any]) -> str:
    return (f"| {name} | {_fmt(lat.get('count'))} | {_fmt(lat.get('p50'))} | "
            f"{_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('p999'))} | "
            f"{_fmt(lat.get('max'))} |")


def cpu_table_markdown(cpu: Mapping[str, Any]) -> list[str]:
    """The "where the CPU went" table of a run's ``cpu`` section (harness.cpu)."""
    lines = ["## Where the CPU went", ""]
    wall = cpu.get("wall_s", 0.0)
    lines.append(f"Over {wall:.0f} s of wall time ({cpu.get('window', 'the run')}); "
                 f"{cpu.get('deliveries_per_s', 0):,.0f} deliveries/s; machine: "
                 f"{cpu.get('cores', '?')} cores, {cpu.get('machine_busy_pct', 0):.0f} % busy.")
    lines += ["", "| component | processes | CPU s | share | cores | µs per delivery |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, row in cpu.get("components", {}).items():
        per = row.get("us_per_delivery")
        lines.append(f"| {name} | {row['processes']} | {row['cpu_s']:.1f} | "
                     f"{row['share_pct']:.1f} % | {row['cores']:.2f} | "
                     f"{'—' if per is None else f'{per:.1f}'} |")
    lines.append("")
    return lines


def render_markdown(report: Report, title: str = "turnout run",
                    cpu: Mapping[str, Any] | None = None) -> str:
    """report.md: verdict, violations, totals, latency (overall, per phase, per fault), faults
    with their stale windows, where the CPU went, problem clients."""
    icon = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}[report.verdict]
    lines = [f"# {title}: {icon}", ""]
    if report.error:
        lines += [f"The harness could not run: {report.error}", ""]
    note = positions_note(report.recording)
    if note:
        lines += [f"> {note}", ""]
    if report.violations:
        lines += ["## Violations", ""]
        lines += [f"- {v}" for v in report.violations]
        lines.append("")
    if report.invariants:
        lines += ["## Invariants", "", "| invariant | result | actual | limit |"]
        lines.append("|---|---|---|---|")
        for r in report.invariants:
            ok = "ok" if r.ok else "**violated**"
            lines.append(f"| {r.name} | {ok} | {_fmt(r.actual)} | {r.limit} |")
        lines.append("")
    lines += ["## Totals", "", "| total | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report.totals.items()]
    lines += ["", f"Duration: {report.duration_s:g} s", ""]
    lines += ["## Delivery latency (ms, publish invoke to first receive)", "",
              "| window | deliveries | p50 | p90 | p99 | p99.9 | max |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines.append(_latency_row("all", report.latency_ms))
    for phase, lat in report.latency_by_phase.items():
        lines.append(_latency_row(f"phase {phase}", lat))
    for f in report.faults:
        if f.latency_ms:
            lines.append(_latency_row(f"{f.fault_id} {f.fault} window", f.latency_ms))
    if len(report.groups) > 1:
        lines += ["", "## Client groups", "",
                  "| group | clients | lost | clients losing | duplicated | reordered "
                  "| unexpected | unfinished |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {g['clients']} | {g['lost']} | {g['clients_losing']} "
                  f"| {g['duplicated']} | {g['reordered']} | {g['unexpected']} "
                  f"| {g['unfinished']} |" for name, g in report.groups.items()]
    lines += ["", "## Reconnects", ""]
    lines += [f"- {k}: {v}" for k, v in report.reconnects.items()]
    lines.append("")
    if report.phases:
        lines += ["## Phases", ""]
        lines += [f"- {p} at {t:g} s" for p, t in report.phases]
        lines.append("")
    skipped = [f for f in report.faults if f.status == "skipped"]
    if skipped:
        lines += ["## Faults skipped", "",
                  "Not run on this cluster's server, so the run proves nothing about them:", ""]
        lines += [f"- {f.fault_id} {f.fault} on {f.target}: {f.error}" for f in skipped]
        lines.append("")
    if report.faults:
        lines += [
            "## Faults", "",
            "| id | fault | target | status | injected at (s) | healed at (s) | recovery (s) "
            "| stale windows and catch-up | observed |",
            "|---|---|---|---|---:|---:|---:|---|---|",
        ]
        for f in report.faults:
            rec = _fmt(f.recovery_s)
            if f.recovery_s is None and f.healed_at is not None:
                rec = "never"
            lines.append(
                f"| {f.fault_id} | {f.fault} | {f.target} | {f.status} | {_fmt(f.injected_at)} "
                f"| {_fmt(f.healed_at)} | {rec} | {fault_recovery_text(f)} "
                f"| {', '.join(f'{k}: {v}' for k, v in f.observed.items())} |")
        lines.append("")
    if cpu:
        lines += cpu_table_markdown(cpu)
    if report.presence:
        p = report.presence
        lines += ["## Presence", "",
                  f"- {p['finished']} of {p['viewers']} presence clients judged on "
                  f"{p['channels']} channels; {p['connected_users']} users connected at the "
                  f"end; {p['member_events']} member events",
                  f"- ghosts {p['ghosts']}, missing {p['missing']}, inconsistent member "
                  f"events {p['inconsistent']}, snapshots without self {p['self_missing']}, "
                  f"never joined {p['no_snapshot']}"]
        lines += [f"- {example}" for kind in sorted(p.get("examples") or {})
                  for example in p["examples"][kind]]
        lines += [""]
    if report.recording:
        recording = report.recording
        lines += ["## Recording", "",
                  f"- compact record (runs of positions per subscription): "
                  f"{'yes' if recording.get('compact') else 'no'}",
                  f"- sampled subscriptions cross-checked against it: "
                  f"{recording.get('sampled_subscriptions', 0)}, disagreeing: "
                  f"{recording.get('inconsistent', 0)}",
                  f"- server positions: {recording.get('positions', '?')} "
                  f"({recording.get('positioned_deliveries', 0)} deliveries with one, "
                  f"{recording.get('unpositioned_deliveries', 0)} judged by update id)", ""]
    if report.clients:
        shown = len(report.clients)
        lines += [
            "## Clients with problems", "",
            f"{report.clients_with_problems} clients had problems"
            + (f"; the first {shown} are listed." if shown < report.clients_with_problems
               else "."), "",
        ]
        for c in report.clients:
            parts = []
            if not c.finished:
                parts.append("never finished")
            if c.lost:
                ids = "; ".join(f"{ch}: {', '.join(v)}" for ch, v in c.lost_ids.items())
                parts.append(f"lost {c.lost} ({ids})")
            for label, n, ids_ in (("duplicated", c.duplicated, c.duplicated_ids),
                                   ("reordered", c.reordered, c.reordered_ids),
                                   ("unexpected", c.unexpected, c.unexpected_ids)):
                if n:
                    parts.append(f"{label} {n} ({', '.join(ids_)})")
            if c.unsubscribed:
                parts.append(f"never subscribed to {', '.join(c.unsubscribed)}")
            parts.append(f"{c.reconnects} reconnects")
            lines.append(f"- **{c.client}**: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines)


def render_junit(report: Report, name: str) -> str:
    """junit.xml: one testcase per invariant, a <failure> for each violated one.

    A run the harness could not carry out becomes one testcase with an <error>.
    """
    suites = ET.Element("testsuites")
    failures = sum(1 for r in report.invariants if not r.ok)
    errors = 1 if report.verdict == "error" else 0
    tests = len(report.invariants) + errors
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(tests),
                          failures=str(failures), errors=str(errors),
                          time=f"{report.duration_s:.3f}")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="verdict", value=report.verdict)
    for key, val in report.totals.items():
        ET.SubElement(props, "property", name=f"totals.{key}", value=str(val))
    for key, lat in report.latency_ms.items():
        ET.SubElement(props, "property", name=f"latency_ms.{key}", value=_fmt(lat))
    if report.verdict == "error":
        case = ET.SubElement(suite, "testcase", classname=name, name="harness")
        err = ET.SubElement(case, "error", message=report.error or "harness error")
        err.text = report.error or ""
    for r in report.invariants:
        case = ET.SubElement(suite, "testcase", classname=name, name=r.name)
        if r.ok:
            out = ET.SubElement(case, "system-out")
            out.text = r.message
        else:
            fail = ET.SubElement(case, "failure", message=r.message, type="InvariantViolated")
            fail.text = r.message
    ET.indent(suites)
    body = ET.tostring(suites, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
