"""What the TUI browses and offers: experiment files, past run folders, the fault catalogue.

Everything here is plain synchronous Python over files. The fault catalogue is
the harness's (``FAULT_KINDS``, harness.faults: each kind's targets, parameter schema, words
and sentence), which is pure: importing it does not pull in trio (tests/tui/test_no_trio.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from harness import targets
from harness.experiment import (
    EXPERIMENTS_DIR,
    FAULT_KINDS,
    Experiment,
    ExperimentError,
    FaultKind,
    load_experiment,
)
from harness.fault_request import ClusterNames, FaultRequestError, check_fault, valid_targets
from server.schema import Key, field_extra, problem, validate, validate_text

__all__ = [
    "FAULT_KINDS",
    "ClusterNames",
    "ExperimentEntry",
    "FaultRequest",
    "PhraseError",
    "RunEntry",
    "confirmation",
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
    """One interactive fault, as sent over control.sock (``{"cmd": "inject", ...}``).
    ``duration_s`` None: the kind takes none, or held until healed."""

    kind: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    def command(self) -> dict[str, Any]:
        return {"cmd": "inject", "kind": self.kind, "target": self.target,
                "params": dict(self.params), "duration_s": self.duration_s}

    def describe(self) -> str:
        return describe_fault(self.kind, self.target, self.params, self.duration_s)

    def checked(self, topology: ClusterNames | None) -> FaultRequest:
        """The request as the harness will check it (the experiment schema, the cluster's
        names), defaults filled in; FaultRequestError saying why it is refused."""
        fault = check_fault(self.kind, self.target, dict(self.params), self.duration_s,
                            topology)
        return FaultRequest(fault.kind, fault.target, fault.params, fault.duration_s)


def default_request(kind: str, target: str | None = None) -> FaultRequest:
    spec = FAULT_KINDS[kind]
    return FaultRequest(kind, target or spec.default_target,
                        {k.name: k.default for k in spec.keys}, spec.duration_s)


def topology_from_experiment(doc: Mapping[str, Any] | None) -> ClusterNames:
    """The nodes and links a cluster of the experiment has (before any status event)."""
    nodes = int(((doc or {}).get("cluster") or {}).get("nodes") or 3)
    names = tuple(f"node-{i}" for i in range(1, nodes + 1))
    links = ("clients->lb[0]", *(f"lb[0]->{n}" for n in names), *(f"{n}->redis" for n in names))
    return ClusterNames(names, links)


def targets_for(kind: str, topology: ClusterNames) -> list[str]:
    """The targets ``kind`` accepts in this cluster, the kind's default first."""
    return valid_targets(kind, topology)


def confirmation(request: FaultRequest) -> str | None:
    """Why ``request`` should be confirmed before it is sent; None if it need not be."""
    reasons = []
    spec = FAULT_KINDS.get(request.kind)
    if spec is not None and spec.destructive:
        reasons.append(f"it {spec.destructive}")
    if request.kind == "restart_redis" and request.params.get("flush"):
        reasons.append("Redis restarts EMPTY: updates published before cannot be recovered "
                       "(the checker counts them as lost)")
    parts = set(request.target.split("->"))
    if "all" in parts and request.kind != "rolling_restart":
        reasons.append("it hits every node at once")
    if "random" in parts:
        reasons.append("the harness picks the node at random")
    return "; ".join(reasons) if reasons else None


def describe_fault(kind: str, target: str, params: Mapping[str, Any],
                   duration_s: float | None) -> str:
    """A fault in words (each kind's own ``describe``): ``kill node-2 (restart after 2 s)``,
    ``add 300 ms latency to the clients' links for 10 s``."""
    spec = FAULT_KINDS.get(kind)
    if spec is None:
        text = f"{kind} on {target}"
    else:
        known = {k.name: params[k.name] for k in spec.keys if k.name in params}
        shown = {k.name: k.default for k in spec.keys} | known
        text = spec.describe(target, SimpleNamespace(**shown))
    if duration_s:
        text += f" for {float(duration_s):g} s"
    elif spec is not None and spec.duration_s is not None:
        text += " until healed"
    return text


class PhraseError(ValueError):
    """A typed fault the harness would refuse; ``str()`` says why, ``suggestions`` are
    requests that would be valid readings of it (never sent without being chosen)."""

    def __init__(self, message: str, suggestions: Sequence[FaultRequest] = ()) -> None:
        super().__init__(message)
        self.suggestions = tuple(suggestions)


_NUMBER = r"(-?\d+(?:\.\d+)?)"
_FOR = re.compile(rf"\bfor\s+{_NUMBER}\s*(s|sec|secs|seconds?|m|min|mins|minutes?)?\b")


def _normalize(text: str) -> str:
    t = " ".join(text.lower().split())
    t = re.sub(r"\bnode[\s-]?(\d+)\b", r"node-\1", t)        # node 2, node2 → node-2
    t = re.sub(r"\blb\s*(\d+)\b", r"lb[\1]", t)                # lb 0 → lb[0]
    t = re.sub(r"\s*->\s*", "->", t)
    t = re.sub(r"\b(?:every|each) nodes?\b|\ball (?:the )?nodes\b", "all", t)
    t = re.sub(r"\b(?:a |one )?random node\b", "random", t)
    t = re.sub(r"\bthe clients?\b", "clients", t)
    return t


def _phrase_params(spec: type[FaultKind], t: str, rest: str) -> dict[str, Any]:
    """The parameters a phrase sets, through each field's ``phrase`` pattern."""
    params: dict[str, Any] = {}
    for key in spec.keys:
        pattern = field_extra(key.info, "phrase")
        if pattern is None:
            continue
        m = re.search(pattern.replace("{N}", _NUMBER), rest if "{N}" in pattern else t)
        if m is None:
            continue
        fixed = field_extra(key.info, "value")
        if fixed is not None:
            params[key.name] = fixed
            continue
        found = next(g for g in m.groups() if g is not None)
        if "{N}" not in pattern:
            params[key.name] = found
            continue
        value = float(found) * field_extra(key.info, "scale")
        params[key.name] = int(value) if key.integer and value.is_integer() else value
    return params


def parse_fault_phrase(text: str, topology: ClusterNames) -> FaultRequest | None:
    """Read a fault from a phrase typed in the command palette.

    ``kill node-2``, ``partition node-1 from redis for 10 s``, ``add 300 ms latency to
    node-1->redis``, ``leak 50 MB/s on node-1``, ``pause node-3 for 5s``, ``throttle clients to
    16 KB/s``, ``restart redis``, ``rolling restart``. None when it names no fault kind. The
    first kind whose ``words`` the phrase contains is the kind; its fields' ``phrase``
    patterns read the parameters.

    What the phrase says is what is sent, or nothing: a target the cluster does not have, a
    target the kind cannot take, a negative or out-of-range number raise PhraseError with the
    reason (through the same checks as the control socket, harness.fault_request); a phrase
    without a target gets the kind's default target, which the palette then names.
    """
    t = _normalize(text)
    spec = next((k for k in FAULT_KINDS.values() if re.search(k.words, t)), None)
    if spec is None:
        return None
    kind = spec.kind
    target = spec.phrase_target(t, targets.find_all(t))
    # Numbers are read with the targets taken out (lb[0]->node-2 holds no "-2").
    rest = targets.TOKEN.sub(" ", t)
    duration: float | None = spec.duration_s
    params: dict[str, Any] = {}
    m = _FOR.search(rest)
    if m:
        value = float(m.group(1)) * (60 if (m.group(2) or "s").startswith("m") else 1)
        rest = rest[:m.start()] + " " + rest[m.end():]
        if spec.duration_s is not None:
            duration = value
        elif spec.for_param is not None:
            params[spec.for_param] = value
        else:
            raise PhraseError(f"{kind} takes no duration; it heals at {spec.heal_at}")
    if spec.duration_s is not None and re.search(r"\buntil heal", t):
        duration = None
    params |= _phrase_params(spec, t, rest)
    request = FaultRequest(kind, target or spec.default_target, params, duration)
    try:
        return request.checked(topology)
    except FaultRequestError as exc:
        raise PhraseError(str(exc), _suggest(request, topology)) from None


def _suggest(request: FaultRequest, topology: ClusterNames) -> list[FaultRequest]:
    """Valid readings of a refused request: a link fault named on a node → that node's links."""
    out = []
    if "client_link" in FAULT_KINDS[request.kind].targets \
            and re.fullmatch(r"node-\d+", request.target):
        for link in topology.links:
            if link.endswith(f"->{request.target}") or link.startswith(f"{request.target}->"):
                try:
                    out.append(FaultRequest(request.kind, link, request.params,
                                            request.duration_s).checked(topology))
                except FaultRequestError:
                    pass
    return out


def convert_param(kind: str, key: Key, raw: str | bool) -> Any:
    """An input widget's value through the kind's schema (raises ValueError with why)."""
    schema = FAULT_KINDS[kind].Params
    try:
        checked = (validate_text if isinstance(raw, str) else validate)(
            schema, {key.name: raw.strip() if isinstance(raw, str) else raw})
    except ValidationError as exc:
        name, text = problem(exc, schema)
        raise ValueError(f"{name}: {text}") from None
    return getattr(checked, key.name)


def kind_choices() -> Sequence[tuple[str, str]]:
    return [(f"{name} — {_short(kind.summary)}", name) for name, kind in FAULT_KINDS.items()]


def _short(summary: str) -> str:
    first = summary.split(". ")[0].rstrip(".")
    return first if len(first) <= 60 else first[:57] + "…"
