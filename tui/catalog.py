"""What the TUI browses and offers: experiment files, past run folders, the fault catalogue.

Everything here is plain synchronous Python over files. The fault schema comes from
``harness.experiment`` (``FAULT_KINDS``: kinds, target classes, parameters with defaults and
units), which is pure: importing it does not pull in trio (tests/tui/test_no_trio.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.experiment import (
    EXPERIMENTS_DIR,
    FAULT_KINDS,
    Experiment,
    ExperimentError,
    FaultKind,
    Key,
    load_experiment,
)

__all__ = [
    "FAULT_KINDS",
    "ExperimentEntry",
    "FaultRequest",
    "RunEntry",
    "default_experiments_dir",
    "default_request",
    "describe_fault",
    "list_experiments",
    "list_runs",
    "new_run_dir",
    "parse_fault_phrase",
    "read_run",
    "targets_for",
    "topology_from_experiment",
]

# A run still in its setup phase (Redis, Toxiproxy, HAProxy, the nodes and the fleet starting)
# has no control socket yet: it counts as in progress if it wrote its events this recently.
RECENT_S = 60.0


def default_experiments_dir() -> Path:
    local = Path("experiments")
    return local if local.is_dir() else EXPERIMENTS_DIR


# --------------------------------------------------------------------------------------------
# Experiments.


@dataclass(frozen=True)
class ExperimentEntry:
    path: Path
    name: str
    experiment: Experiment | None
    error: str | None = None

    @property
    def summary(self) -> str:
        if self.experiment is None:
            return "invalid"
        exp = self.experiment
        kinds = sorted({f.kind for f in exp.faults})
        return (f"{exp.cluster.nodes} nodes · {exp.clients.count} clients · "
                + (", ".join(kinds) if kinds else "no faults"))


def list_experiments(directory: Path) -> list[ExperimentEntry]:
    """Every ``*.toml`` in ``directory``, sorted by name; invalid files carry their error."""
    entries = []
    for path in sorted(directory.glob("*.toml")):
        try:
            exp = load_experiment(path)
        except ExperimentError as exc:
            entries.append(ExperimentEntry(path, path.stem, None, str(exc)))
            continue
        entries.append(ExperimentEntry(path, exp.name, exp))
    return entries


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """``runs/<time>-<name>/``, the same naming as a headless ``turnout run``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{stamp}-{name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = runs_dir / f"{stamp}-{name}-{suffix}"
    return path


# --------------------------------------------------------------------------------------------
# Run folders.


@dataclass(frozen=True)
class RunEntry:
    path: Path
    experiment: str
    # pass / fail / error (finished, from report.json or the verdict event), running (in
    # progress: attach to it), stopped (no verdict and nobody is writing it any more)
    verdict: str
    exit_code: int | None = None
    report: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.verdict in ("pass", "fail", "error")

    @property
    def in_progress(self) -> bool:
        return self.verdict == "running"


def _last_event(events: Path) -> dict[str, Any] | None:
    """The last complete event of events.jsonl (the verdict, for a finished run)."""
    try:
        with open(events, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 262144))
            tail = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(tail[-3:]):
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "type" in event:
                return event
    return None


def control_alive(path: Path) -> bool:
    """Whether something listens on the run's control socket."""
    if not path.exists():
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.2)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def read_run(path: Path) -> RunEntry:
    """Classify one run folder from what is in it."""
    report_path = path / "report.json"
    name = path.name
    experiment = re.sub(r"^\d{8}-\d{6}-", "", name)
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text())
            return RunEntry(path, str(report.get("experiment", experiment)),
                            str(report.get("verdict", "error")), report.get("exit_code"), report)
        except (OSError, ValueError):
            pass
    events = path / "events.jsonl"
    last = _last_event(events)
    if last is not None and last.get("type") == "verdict":
        report = last.get("report") or {}
        return RunEntry(path, str(report.get("experiment", experiment)),
                        str(report.get("verdict", "error")), last.get("exit_code"), report)
    if control_alive(path / "control.sock"):
        return RunEntry(path, experiment, "running")
    # No control socket yet: a run still setting up its cluster has written only its first
    # events, and recently.
    setting_up = last is not None and (last.get("type") == "run" or last.get("phase") == "setup")
    if setting_up and time.time() - events.stat().st_mtime < RECENT_S:
        return RunEntry(path, experiment, "running")
    return RunEntry(path, experiment, "stopped")


def list_runs(runs_dir: Path) -> list[RunEntry]:
    """Every run folder (one holding events.jsonl or report.json), newest first."""
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir()
               if p.is_dir() and ((p / "events.jsonl").exists() or (p / "report.json").exists())]
    return [read_run(p) for p in sorted(folders, key=lambda p: p.name, reverse=True)]


# --------------------------------------------------------------------------------------------
# Faults: requests, targets, phrases.


@dataclass(frozen=True)
class FaultRequest:
    """One interactive fault, as sent over control.sock (``{"cmd": "inject", ...}``)."""

    kind: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    def command(self) -> dict[str, Any]:
        return {"cmd": "inject", "kind": self.kind, "target": self.target,
                "params": dict(self.params), "duration_s": self.duration_s}

    def describe(self) -> str:
        return describe_fault(self.kind, self.target, self.params, self.duration_s)


def param_keys(kind: str) -> tuple[Key, ...]:
    return FAULT_KINDS[kind].params


def default_request(kind: str, target: str | None = None) -> FaultRequest:
    spec = FAULT_KINDS[kind]
    return FaultRequest(kind, target or spec.default_target,
                        {k.name: k.default for k in spec.params}, spec.duration_s)


@dataclass(frozen=True)
class Topology:
    """The names a fault can target in one cluster: nodes and Toxiproxy links."""

    nodes: tuple[str, ...]
    links: tuple[str, ...]

    @property
    def lanes(self) -> tuple[str, ...]:
        found = sorted({m.group(1) for link in self.links
                        if (m := re.match(r"(lb\[\d+\])", link.split("->")[-1]))})
        return tuple(found)


def topology_from_experiment(doc: Mapping[str, Any] | None) -> Topology:
    """The nodes and links a cluster of the experiment has (before any status event)."""
    nodes = int(((doc or {}).get("cluster") or {}).get("nodes") or 3)
    names = tuple(f"node-{i}" for i in range(1, nodes + 1))
    links = ("clients->lb[0]", *(f"lb[0]->{n}" for n in names), *(f"{n}->redis" for n in names))
    return Topology(names, links)


def targets_for(kind: str, topology: Topology) -> list[str]:
    """The targets ``kind`` accepts in this cluster, the kind's default first."""
    spec: FaultKind = FAULT_KINDS[kind]
    out: list[str] = []
    for cls in spec.targets:
        if cls == "node":
            out += topology.nodes
        elif cls in ("random", "all", "redis", "clients"):
            out.append(cls)
        elif cls == "lb":
            out += ["lb", *topology.lanes]
        elif cls == "client_link":
            out += [link for link in topology.links if link.startswith("clients->")]
        elif cls == "lb_link":
            out += [link for link in topology.links if link.startswith("lb")]
        elif cls == "redis_link":
            out += [link for link in topology.links if link.endswith("->redis")]
    unique = list(dict.fromkeys(out))
    if spec.default_target in unique:
        unique.remove(spec.default_target)
        unique.insert(0, spec.default_target)
    return unique


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _on(target: str) -> str:
    if target == "clients":
        return "the clients' links"
    if target == "redis":
        return "every node's Redis link"
    if target == "random":
        return "a random node"
    if target == "all":
        return "every node"
    return target


def describe_fault(kind: str, target: str, params: Mapping[str, Any],
                   duration_s: float | None) -> str:
    """A fault in words: ``kill node-2 (restart after 2 s)``, ``add 300 ms latency to ...``."""
    p: dict[str, Any] = ({k.name: k.default for k in FAULT_KINDS[kind].params}
                         if kind in FAULT_KINDS else {})
    p.update(params)
    node = _on(target)
    restart = (f" (restart after {_num(p.get('restart_after_s'))} s)" if p.get("restart", True)
               else " (no restart)")
    if kind == "kill_node":
        text = f"kill {node}{restart}"
    elif kind == "stop_node":
        text = f"stop {node} gracefully{restart}"
    elif kind == "pause_node":
        text = f"pause {node}"
    elif kind == "rolling_restart":
        text = f"rolling restart of every node, {_num(p.get('interval_s'))} s apart"
    elif kind == "restart_redis":
        text = f"restart Redis after {_num(p.get('restart_after_s'))} s down"
        if p.get("flush"):
            text += ", flushed"
    elif kind == "partition_redis":
        if target.endswith("->redis"):
            who = _on(target.removesuffix("->redis"))
        else:
            who = "every node"
        text = f"partition {who} from Redis"
        if p.get("mode") == "cut":
            text += " (cut)"
    elif kind == "latency":
        text = f"add {_num(p.get('latency_ms'))} ms latency to {node}"
        if p.get("jitter_ms"):
            text += f" (± {_num(p.get('jitter_ms'))} ms)"
    elif kind == "bandwidth":
        text = f"throttle {node} to {_num(p.get('rate_kbps'))} KB/s"
    elif kind == "reset_peer":
        text = f"reset connections on {node}"
    elif kind == "slicer":
        text = f"slice the stream on {node} into ~{_num(p.get('average_size'))} B pieces"
    elif kind == "leak_memory":
        text = f"leak {_num(p.get('mb_per_s'))} MB/s on {node}"
    elif kind == "slow_consumers":
        text = f"make {_num(float(p.get('share') or 0) * 100)}% of the clients slow consumers"
    elif kind == "connection_storm":
        text = f"storm {_num(p.get('clients'))} connections on {target}"
    else:
        text = f"{kind} on {target}"
    spec = FAULT_KINDS.get(kind)
    if duration_s:
        text += f" for {_num(float(duration_s))} s"
    elif spec is not None and spec.duration_s is not None:
        text += " until healed"
    return text


_NUMBER = r"(\d+(?:\.\d+)?)"


def _find_target(text: str, candidates: Iterable[str]) -> str | None:
    """The longest candidate target written in ``text`` (``node-1->redis`` over ``node-1``)."""
    found = [c for c in candidates if re.search(rf"(?<![\w\[-]){re.escape(c.lower())}(?![\w\]])",
                                                text)]
    return max(found, key=len) if found else None


def parse_fault_phrase(text: str, topology: Topology) -> FaultRequest | None:
    """Read a fault from a phrase typed in the command palette.

    ``kill node-2``, ``partition node-1 from redis for 10 s``, ``add 300 ms latency to
    node-1->redis``, ``leak 50 MB/s on node-1``, ``pause node-3 for 5s``, ``throttle clients to
    16 KB/s``, ``restart redis``, ``rolling restart``. None when it names no fault.
    """
    t = " ".join(text.lower().split())
    kind: str | None = None
    params: dict[str, Any] = {}
    if re.search(r"\brolling\b", t):
        kind = "rolling_restart"
    elif re.search(r"\brestart\s+redis\b", t):
        kind = "restart_redis"
    elif re.search(r"\bpartition\b", t):
        kind = "partition_redis"
    elif re.search(r"\bkill\b", t):
        kind = "kill_node"
    elif re.search(r"\b(stop|drain)\b", t):
        kind = "stop_node"
    elif re.search(r"\b(pause|freeze|sigstop)\b", t):
        kind = "pause_node"
    elif m := re.search(rf"\bleak\b(?:\D*?{_NUMBER}\s*mb)?", t):
        kind = "leak_memory"
        if m.group(1):
            params["mb_per_s"] = float(m.group(1))
    elif m := re.search(rf"(?:{_NUMBER}\s*ms\s+(?:of\s+)?)?\b(latency|delay)\b", t):
        kind = "latency"
        m2 = re.search(rf"{_NUMBER}\s*ms\b", t)
        if m2:
            params["latency_ms"] = float(m2.group(1))
    elif re.search(r"\b(throttle|bandwidth)\b", t):
        kind = "bandwidth"
        m2 = re.search(rf"{_NUMBER}\s*kb", t)
        if m2:
            params["rate_kbps"] = float(m2.group(1))
    elif re.search(r"\breset\b", t):
        kind = "reset_peer"
    elif re.search(r"\bslic", t):
        kind = "slicer"
    elif re.search(r"\bslow\b", t):
        kind = "slow_consumers"
        m2 = re.search(rf"{_NUMBER}\s*%", t)
        if m2:
            params["share"] = min(1.0, float(m2.group(1)) / 100)
    elif re.search(r"\bstorm\b", t):
        kind = "connection_storm"
        m2 = re.search(r"\bstorm\D*?(\d+)", t)
        if m2:
            params["clients"] = int(m2.group(1))
    if kind is None:
        return None
    if kind in ("kill_node", "stop_node") and re.search(r"\bno restart\b|\bfor good\b", t):
        params["restart"] = False
    spec = FAULT_KINDS[kind]
    candidates = targets_for(kind, topology)
    target = None
    if kind == "partition_redis":
        node = _find_target(t, [*topology.nodes, "all", "random"])
        target = f"{node}->redis" if node else "redis"
    else:
        target = _find_target(t, candidates)
    if target is None:
        target = spec.default_target
    duration = spec.duration_s
    m3 = re.search(rf"\bfor\s+{_NUMBER}\s*(?:s|sec|secs|seconds)?\b", t)
    if m3 and spec.duration_s is not None:
        duration = float(m3.group(1))
    elif m3 and kind in ("kill_node", "stop_node"):
        params["restart_after_s"] = float(m3.group(1))
    full = {k.name: k.default for k in spec.params}
    full.update(params)
    return FaultRequest(kind, target, full, duration)


def convert_param(key: Key, raw: str | bool) -> Any:
    """An input widget's value through the schema's own check (raises ValueError with why)."""
    check = key.check
    value: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        name = type(check).__name__
        try:
            if name == "Integer":
                value = int(text)
            elif name == "Number":
                value = float(text)
        except ValueError:
            value = text
    try:
        return check.convert(value)
    except Exception as exc:  # the schema's _Invalid: its message says what was expected
        raise ValueError(f"{key.name}: {exc}") from None


def kind_choices() -> Sequence[tuple[str, str]]:
    return [(f"{name} — {_short(kind.summary)}", name) for name, kind in FAULT_KINDS.items()]


def _short(summary: str) -> str:
    first = summary.split(". ")[0].rstrip(".")
    return first if len(first) <= 60 else first[:57] + "…"
