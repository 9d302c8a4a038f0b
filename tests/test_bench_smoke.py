"""Smoke test of the fan-out benchmark: it runs end to end and reports sane fields.

Only the plumbing is checked (every server measured, every connection delivered to, numbers
present and positive); no timing is asserted. Speed lives in docs/benchmarks.md.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.procs import HarnessSetupError
from harness.servers import find_sockudo

REPO = Path(__file__).resolve().parents[1]


def run_bench(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` from the repo root; skips without redis-server."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.timeout(180)
def test_fanout_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    proc = run_bench("bench.fanout", "--connections", "200", "--rounds", "1", "--messages", "2",
                     "--settle", "0.2", "--timeout", "150", "--json", str(out), timeout=170)
    result = json.loads(out.read_text())
    assert result["config"]["connections"] == 200
    assert result["config"]["client_processes"] >= 2
    try:  # Sockudo is optional (scripts/setup-peers.sh): measured by default where installed
        find_sockudo()
        peers = {"sockudo"}
    except HarnessSetupError:
        peers = set()
    assert set(result["servers"]) == {"floor", "naive", "asyncio", "turnout"} | peers
    for name, server in result["servers"].items():
        cpu = server["cpu_us_per_delivery"]
        assert len(cpu["samples"]) == 2, name
        assert 0 < cpu["min"] <= cpu["median"] <= cpu["max"] < 100_000, name
        rss = server["rss_kib_per_conn"]
        assert math.isfinite(rss["median"]), name
        assert server["fanout_wall_ms"]["median"] > 0, name
    assert set(result["ratios"]) == {f"{name}/floor" for name in result["servers"]} - {
        "floor/floor"}
    assert all(r["median"] > 0 for r in result["ratios"].values())
    assert {"cpu_met", "rss_met"} <= set(result["targets"])
    assert "turnout" in proc.stdout  # the table was printed


@pytest.mark.timeout(120)
def test_redis_client_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "redis.json"
    run_bench("bench.redis_client", "--round-trips", "50", "--rounds", "2", "--json", str(out),
              timeout=110)
    result = json.loads(out.read_text())
    assert len(result["clients"]) == 3
    for name, entry in result["clients"].items():
        for op in ("ping", "hmget"):
            cell = entry[op]
            assert 0 < cell["min_us"] <= cell["median_us"] <= cell["max_us"] < 1_000_000, name
            assert cell["x_floor"] > 0, name
    assert result["clients"]["redis-py (blocking)"]["ping"]["x_floor"] == 1.0


def _with_tools_path() -> dict[str, str]:
    import os

    return {**os.environ, "PATH": f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}"}


@pytest.mark.timeout(120)
def test_fleet_receive_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    proc = subprocess.run([sys.executable, "-m", "bench.fleet_recv", "--connections", "300",
                           "--messages", "3", "--rounds", "1", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=110, env=_with_tools_path())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    for kind in ("floor", "fleet"):
        assert 0 < result["receivers"][kind]["median_us"] < 10_000, result
    assert result["ratio"]["median"] > 0
    assert "fleet/floor" in proc.stdout


@pytest.mark.timeout(120)
def test_hops_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "hops.json"
    proc = subprocess.run([sys.executable, "-m", "bench.hops", "--connections", "200",
                           "--messages", "2", "--rounds", "1", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=110, env=_with_tools_path())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    median = json.loads(out.read_text())["median"]
    assert set(median) == {"direct", "haproxy", "haproxy-tuned", "haproxy-unix", "toxiproxy"}
    assert all(median[c]["sink"] > 0 for c in median)
    assert all(median[c]["hop0"] > 0 for c in median if c != "direct")


@pytest.mark.timeout(120)
def test_checker_benchmark_finds_exactly_what_it_planted(tmp_path: Path) -> None:
    out = tmp_path / "checker.json"
    proc = subprocess.run([sys.executable, "-m", "bench.checker", "--viewers", "600",
                           "--duration", "120", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["exact"] is True
    assert result["found"] == result["planted"]
    assert result["planted"]["lost"] > 0
    assert result["check"]["seconds"] > 0
    assert result["check"]["peak_rss_bytes"] > 0
