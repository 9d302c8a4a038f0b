"""How long the checker takes, and how much memory, on a history of the full election night.

A synthetic history the size of ``experiments/election-night-full.toml`` is written in the
fleet's own recording format (:mod:`harness.recording`): 40,000 viewers on 2 of 12 channels,
an update per channel every 2.5 s for 1,110 s (5,328 updates, ~35 million owed (viewer,
update) pairs), 8 fleet workers, a full-history sample of 200 viewers, the five faults of the
file (a node kill and a node stop that each disconnect a sixth of the viewers, a rolling
restart that disconnects every viewer once, a Redis partition and a latency spike), with
connect/subscribe/disconnect/stale ops for every reconnect. A few problems are planted (lost
pairs, a duplicate, a reorder, an unexpected update) so the run also shows the checker finds
exactly those.

The check then runs in a fresh process, ``harness.checker.check_files`` on the merged history
file (what ``turnout check RUN_DIR`` does), and its wall time and peak RSS (``ru_maxrss``) are
reported against the issue's limits (60 s, 2 GiB).

    .venv/bin/python -m bench.checker [--viewers 40000] [--duration 1110] [--keep DIR]

Results: docs/benchmarks.md ("Checker at full size").
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 60.0
LIMIT_BYTES = 2 << 30
EPOCH = "a1b2c3d4"


class _Writer:
    def __init__(self, path: Path) -> None:
        self.fh = open(path, "wb")
        self.count = 0

    def op(self, t: float, process: str, typ: str, f: str, value: dict[str, Any]) -> None:
        self.fh.write(orjson.dumps({"time": t, "process": process, "type": typ, "f": f,
                                    "value": value}) + b"\n")
        self.count += 1

    def close(self) -> None:
        self.fh.close()


def generate(out: Path, viewers: int, duration: float, channels: int = 12, workers: int = 8,
             sample: int = 200, seed: int = 1) -> dict[str, Any]:
    """Write parts/*.jsonl of a synthetic full run; return what was planted."""
    rng = random.Random(seed)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    names = [f"results-{i}" for i in range(1, channels + 1)]
    t0 = 1000.0
    start = t0 + 200.0  # the ramp is over
    end = start + duration
    # Publishes: per channel every 2.5 s (jitter), serial, positions 1.. in one epoch.
    pubs: list[tuple[float, str, str, int]] = []  # (invoke, id, channel, offset)
    pid = 0
    for c, ch in enumerate(names):
        t = start + 2.5 * c / channels
        offset = 0
        while t < end:
            pid += 1
            offset += 1
            pubs.append((t, f"p{pid}", ch, offset))
            t += 2.5 + rng.uniform(-0.5, 0.5)
    pubs.sort()
    by_channel: dict[str, list[tuple[float, str, int]]] = {ch: [] for ch in names}
    for t, p, ch, off in pubs:
        by_channel[ch].append((t, p, off))
    w = _Writer(parts / "history-publisher.jsonl")
    for t, p, ch, off in pubs:
        w.op(t, "publisher", "invoke", "publish", {"id": p, "channel": ch, "seq": off})
        w.op(t + 0.004, "publisher", "ok", "publish",
             {"id": p, "channel": ch, "seq": off, "offset": off, "epoch": EPOCH})
    w.close()
    # Faults (the election-night-full schedule, shifted to this history).
    faults = [("f1", "kill_node", "node-2", 60, 65, 1 / 6), ("f2", "stop_node", "node-4", 200,
              215, 1 / 6), ("f3", "rolling_restart", "all", 300, 420, 1.0),
              ("f4", "partition_redis", "node-3->redis", 600, 620, 0.0),
              ("f5", "latency", "clients", 700, 760, 0.0)]
    faults = [(fid, kind, target, at * duration / 1110, heal * duration / 1110, share)
              for fid, kind, target, at, heal, share in faults]
    h = _Writer(parts / "history-harness.jsonl")
    for name, at in (("steady", start), ("faults", start + 120 * duration / 1110),
                     ("heal", start + 1020 * duration / 1110),
                     ("settle", start + 1050 * duration / 1110), ("drain", end)):
        h.op(at, "harness", "info", "phase", {"phase": name})
    fault_start = start + 120 * duration / 1110
    for fid, kind, target, at, heal, _share in faults:
        value = {"fault_id": fid, "fault": kind, "target": target, "params": {}}
        h.op(fault_start + at, "nemesis", "invoke", "fault", value)
        h.op(fault_start + at + 0.01, "nemesis", "ok", "fault", value)
        h.op(fault_start + heal, "nemesis", "ok", "heal", {"fault_id": fid, "observed": {}})
    h.close()
    # Viewers.
    planted = {"lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0}
    sampled = set(rng.sample(range(1, viewers + 1), min(sample, viewers)))
    writers = [_Writer(parts / f"history-client-w{i}.jsonl") for i in range(workers)]
    tables: list[dict[str, dict[int, str]]] = [{} for _ in range(workers)]
    books: list[dict[str, list[Any]]] = [{} for _ in range(workers)]
    drain_at = end + 2.0
    trouble = set(rng.sample(range(1, viewers + 1), 4))
    for v in range(1, viewers + 1):
        wi = v % workers
        wr = writers[wi]
        proc = f"client-{v}"
        chans = (names[v % channels], names[(v + 1) % channels])
        sub_t = start - 100.0 + v * 0.0025
        wr.op(sub_t - 0.01, proc, "ok", "connect", {"socket_id": f"{v}.1"})
        for ch in chans:
            wr.op(sub_t - 0.005, proc, "invoke", "subscribe", {"channel": ch})
        for ch in chans:
            wr.op(sub_t, proc, "ok", "subscribe",
                  {"channel": ch, "recovered": None, "offset": 0, "epoch": None})
        for fid, _kind, _target, at, heal, share in faults:
            if share and (share == 1.0 or v % 6 == int(fid[1:]) % 6):
                d = fault_start + at + rng.uniform(0, heal - at if share == 1.0 else 0.1)
                c = d + rng.uniform(0.05, 3.0)
                wr.op(d, proc, "info", "disconnect", {"code": 4200, "reason": "restart"})
                wr.op(c, proc, "ok", "connect", {"socket_id": f"{v}.{fid}"})
                for ch in chans:
                    wr.op(c + 0.001, proc, "invoke", "subscribe", {"channel": ch})
                for ch in chans:
                    wr.op(c + 0.02, proc, "ok", "subscribe",
                          {"channel": ch, "recovered": True, "offset": 0, "epoch": EPOCH})
                wr.op(c + 0.5, proc, "ok", "stale",
                      {"disconnected": d, "reconnected": c, "caught_up": c + 0.3})
        for ch in chans:
            updates = by_channel[ch]
            top = updates[-1][2]
            runs: list[list[Any]] = [[EPOCH, 1, top]]
            if v in trouble:  # plant one problem per troubled viewer and channel 0
                which = sorted(trouble).index(v)
                k = len(updates) // 2
                if ch == chans[0]:
                    if which == 0:  # two lost pairs
                        runs = [[EPOCH, 1, k - 1], [EPOCH, k + 2, top]]
                        planted["lost"] += 2
                    elif which == 1:  # one duplicate
                        runs = [[EPOCH, 1, k], [EPOCH, k, top]]
                        planted["duplicated"] += 1
                    elif which == 2:  # one reorder: k+1 before k
                        runs = [[EPOCH, 1, k - 1], [EPOCH, k + 1, k + 1], [EPOCH, k, k],
                                [EPOCH, k + 2, top]]
                        planted["reordered"] += 1
            table = tables[wi].setdefault(ch, {})
            book = books[wi]
            for t, p, off in updates:
                table.setdefault(off, p)
                entry = book.get(p)
                if entry is None:
                    entry = book[p] = [t + 0.002, t, {}]
                lat = int(rng.lognormvariate(-3.2, 0.6) * 1e6) + 1500
                shift = lat.bit_length() - 7
                if shift > 0:
                    lat = (lat >> shift) << shift
                entry[2][lat] = entry[2].get(lat, 0) + 1
                entry[1] = max(entry[1], t + lat / 1e6)
            if v in sampled:
                for t, p, off in updates:
                    wr.op(t + 0.02, proc, "ok", "deliver",
                          {"channel": ch, "id": p, "seq": off, "offset": off, "epoch": EPOCH})
            wr.op(drain_at, proc, "ok", "record",
                  {"channel": ch, "first_ok": sub_t, "runs": runs, "worker": f"fleet-w{wi}"})
        wr.op(drain_at + 0.001, proc, "ok", "drain", {"channels": list(chans)})
    bogus_viewer = sorted(trouble)[3]
    wb = writers[bogus_viewer % workers]
    wb.op(drain_at, f"client-{bogus_viewer}", "ok", "deliver",
          {"channel": names[bogus_viewer % channels], "id": "bogus"})
    planted["unexpected"] += 1
    for wi, wr in enumerate(writers):
        positions = {ch: {EPOCH: [1, [tbl[o] for o in range(1, max(tbl) + 1)]]}
                     for ch, tbl in tables[wi].items()}
        wr.op(drain_at + 1, f"fleet-w{wi}", "ok", "positions", {"positions": positions})
        latency = {p: [e[0], e[1], [x for kv in sorted(e[2].items()) for x in kv]]
                   for p, e in books[wi].items()}
        wr.op(drain_at + 1, f"fleet-w{wi}", "ok", "latency", {"latency": latency})
        wr.close()
    owed = sum(len(by_channel[names[v % channels]]) + len(by_channel[names[(v + 1) % channels]])
               for v in range(1, viewers + 1))
    return {"planted": planted, "owed": owed, "updates": len(pubs)}


_CHILD = """
import json, resource, sys, time
from harness.checker import Invariants, check_files
t0 = time.perf_counter()
report = check_files([sys.argv[1]], Invariants())
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": elapsed, "peak_rss_bytes": peak, "verdict": report.verdict,
                  "totals": dict(report.totals)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=40_000)
    parser.add_argument("--duration", type=float, default=1110.0)
    parser.add_argument("--keep", type=Path, help="write the history here and keep it")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from harness.runner import merge_history_files

    with tempfile.TemporaryDirectory(prefix="bench-checker-") as tmp:
        out = args.keep or Path(tmp)
        t0 = time.perf_counter()
        truth = generate(out, args.viewers, args.duration)
        parts = sorted((out / "parts").glob("history-*.jsonl"))
        ops = merge_history_files(parts, out / "history.jsonl")
        generated_s = time.perf_counter() - t0
        size = (out / "history.jsonl").stat().st_size
        print(f"history: {args.viewers} viewers, {truth['updates']} updates, "
              f"{truth['owed']:,} owed pairs, {ops:,} ops, {size / 2**20:.0f} MiB "
              f"(written in {generated_s:.0f} s)", flush=True)
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(out / "history.jsonl")],
                              cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        result = json.loads(proc.stdout)
    totals = result["totals"]
    found = {k: totals[k] for k in truth["planted"]}
    exact = found == truth["planted"] and totals["owed"] == truth["owed"]
    ok = result["seconds"] <= LIMIT_S and result["peak_rss_bytes"] <= LIMIT_BYTES
    print(f"check: {result['seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} "
          f"MiB (limits {LIMIT_S:g} s, {LIMIT_BYTES / 2**30:g} GiB: {'met' if ok else 'NOT met'})")
    print(f"owed {totals['owed']:,} (expected {truth['owed']:,}); planted {truth['planted']}, "
          f"found {found}: {'exact' if exact else 'MISMATCH'}")
    if args.json:
        args.json.write_text(json.dumps({
            "config": {"viewers": args.viewers, "duration_s": args.duration},
            "history": {"ops": ops, "bytes": size, "updates": truth["updates"]},
            "check": result, "planted": truth["planted"], "found": found, "exact": exact,
            "limits": {"seconds": LIMIT_S, "bytes": LIMIT_BYTES, "met": ok}}, indent=2))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
