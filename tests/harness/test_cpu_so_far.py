"""harness.cpu's running totals, as every status event carries them (``cpu``): the TUI's live
CPU split takes differences of two of them."""

from __future__ import annotations

import os
import time

from harness.cpu import CpuLedger


def burn(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def test_so_far_counts_each_components_cpu_seconds_from_the_start() -> None:
    ledger = CpuLedger()
    pids = {"node-1": os.getpid()}
    assert ledger.so_far() == {"cores": ledger.cores, "components": {}}
    ledger.sample(pids)
    first = ledger.so_far()["components"]["nodes"]
    burn(0.2)
    ledger.sample(pids)
    second = ledger.so_far()["components"]["nodes"]
    # this process's CPU since the first sample (counted from its start at the first sample)
    assert second - first >= 0.15
    assert set(ledger.so_far()["components"]) == {"nodes"}


def test_a_run_that_ends_before_its_end_mark_still_gets_a_table() -> None:
    """A run ending in error (or cancelled) never marks ``end``: finish() marks it from the
    latest sample, so the report still says where the CPU went up to then."""
    ledger = CpuLedger()
    pids = {"node-1": os.getpid()}
    ledger.sample(pids)
    ledger.mark("setup", 0.0, 0)
    ledger.sample(pids)
    ledger.mark("steady", 1.0, 0)
    burn(0.2)
    ledger.sample(pids)
    ledger.deliveries = 500
    assert ledger.report_table() == {}
    ledger.finish(3.0)
    table = ledger.report_table()
    assert table["window"] == "steady to end"
    assert table["deliveries"] == 500
    assert table["components"]["nodes"]["cpu_s"] >= 0.15
    ledger.finish(4.0)  # idempotent: one end mark
    assert [m.label for m in ledger.marks] == ["setup", "steady", "end"]


def test_a_finished_run_reports_steady_to_drain() -> None:
    ledger = CpuLedger()
    pids = {"node-1": os.getpid()}
    for wall, label in enumerate(("setup", "steady", "drain", "end")):
        ledger.sample(pids)
        ledger.mark(label, float(wall), 10 * wall)
    ledger.finish(9.0)
    assert ledger.report_table()["window"] == "steady to drain"
    assert [m.label for m in ledger.marks] == ["setup", "steady", "drain", "end"]
