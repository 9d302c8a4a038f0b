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
