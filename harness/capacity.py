"""``turnout capacity FILE``: the largest audience the file's pattern holds on this machine.

Each *trial* is the experiment with a given viewer count and short phases (30 s steady, the
file's faults compressed into a 60 s window, 10 s heal, 30 s settle): the same nodes,
channels, publishing rate, channels per viewer and faults, judged with zero loss (the file's
invariants) and the p99 target in the steady and settle phases. Trials bisect the viewer count:
first ``--max-viewers`` itself, then halves of the interval between the largest count that held
and the smallest that did not, until it is narrower than ``--resolution``.

Every trial is printed as it ends and written to ``capacity.json`` and ``capacity.md`` in the
output folder (its run folder is ``trials/<viewers>/``), so a long search can be stopped and
resumed: trials already in ``capacity.json`` are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checker import Invariants
from .experiment import Experiment, Phases

__all__ = ["CapacitySearch", "Trial", "TrialShape", "render_capacity", "trial_experiment"]

VIEWERS_PER_WORKER = 12_000


@dataclass(frozen=True)
class TrialShape:
    """How long each phase of a trial lasts (the file's faults are squeezed into faults_s)."""

    steady_s: float = 30.0
    faults_s: float = 60.0
    heal_s: float = 10.0
    settle_s: float = 30.0


def trial_experiment(base: Experiment, viewers: int, p99_ms: float,
                     shape: TrialShape = TrialShape()) -> Experiment:
    """The file's pattern with ``viewers`` viewers and the short trial phases."""
    clients = dataclasses.replace(
        base.clients, count=viewers,
        processes=min(viewers, max(base.clients.processes,
                                   math.ceil(viewers / VIEWERS_PER_WORKER))),
        full_history=min(base.clients.full_history, 200))
    squeeze = shape.faults_s / base.phases.faults_s if base.phases.faults_s > 0 else 1.0
    faults = tuple(dataclasses.replace(
        f, at_s=round(f.at_s * squeeze, 3),
        duration_s=None if f.duration_s is None else max(1.0, round(f.duration_s * squeeze, 3)))
        for f in base.faults)
    phases = Phases(steady_s=shape.steady_s, faults_s=shape.faults_s if faults else 0.0,
                    heal_s=shape.heal_s, settle_s=shape.settle_s)
    inv = base.invariants
    invariants = dataclasses.replace(
        inv, p99_ms=p99_ms, p99_phases=inv.p99_phases or ("steady", "settle"), min_delivered=1)
    assert isinstance(invariants, Invariants)
    return dataclasses.replace(base, name=f"{base.name}-capacity-{viewers}", clients=clients,
                               faults=faults, phases=phases, invariants=invariants, ci=False)


@dataclass
class Trial:
    viewers: int
    verdict: str
    holds: bool
    p99_ms: dict[str, float | None]
    lost: int
    reasons: list[str]
    run_dir: str
    elapsed_s: float
    cpu: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        p99 = ", ".join(f"{k} {v:.0f} ms" for k, v in self.p99_ms.items() if v is not None)
        why = "" if self.holds else f": {'; '.join(self.reasons)[:300]}"
        return (f"{self.viewers:>7,} viewers: {'holds' if self.holds else 'fails'} "
                f"(p99 {p99 or '—'}, lost {self.lost}, {self.elapsed_s:.0f} s){why}")


def render_capacity(file: str, p99_ms: float, max_viewers: int, trials: list[Trial],
                    answer: int | None, done: bool, shape: TrialShape = TrialShape()) -> str:
    lines = [f"# Capacity of {file}", "",
             f"Target: zero loss through the file's faults and p99 <= {p99_ms:g} ms in the "
             f"steady and settle phases; trials of {shape.steady_s:g} s steady, the faults in "
             f"{shape.faults_s:g} s, {shape.heal_s:g} s heal, {shape.settle_s:g} s settle; "
             f"searched up to {max_viewers:,} viewers.", ""]
    if answer is not None:
        state = "" if done else " (search not finished)"
        lines += [f"**Largest audience that held: {answer:,} viewers**{state}.", ""]
    lines += ["| viewers | result | p99 steady (ms) | p99 settle (ms) | lost | deliveries/s "
              "| run CPU (cores) | reasons | run folder |",
              "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for t in sorted(trials, key=lambda t: t.viewers):
        def ms(key: str, trial: Trial = t) -> str:
            value = trial.p99_ms.get(key)
            return "—" if value is None else f"{value:.0f}"
        lines.append(
            f"| {t.viewers:,} | {'holds' if t.holds else 'fails'} | {ms('steady')} | "
            f"{ms('settle')} | {t.lost} | {t.cpu.get('deliveries_per_s') or 0:,.0f} | "
            f"{t.cpu.get('run_cores') or 0:.2f} | {'; '.join(t.reasons)[:200] or '—'} | "
            f"{t.run_dir} |")
    return "\n".join(lines) + "\n"


class CapacitySearch:
    """Bisection over viewer counts; ``run_trial`` runs one experiment and returns its report
    document (report.json's content) and its run folder."""

    def __init__(self, base: Experiment, out: Path, *, p99_ms: float, max_viewers: int,
                 resolution: int, file: str,
                 run_trial: Callable[[Experiment, Path], Awaitable[dict[str, Any]]],
                 echo: Callable[[str], None] = print, shape: TrialShape = TrialShape()) -> None:
        self.shape = shape
        self.base = base
        self.out = out
        self.p99_ms = p99_ms
        self.max_viewers = max_viewers
        self.resolution = max(1, resolution)
        self.file = file
        self.run_trial = run_trial
        self.echo = echo
        self.trials: dict[int, Trial] = {}
        saved = out / "capacity.json"
        if saved.exists():
            doc = json.loads(saved.read_text())
            if doc.get("p99_ms") == p99_ms and doc.get("file") == file:
                for raw in doc.get("trials", []):
                    trial = Trial(**raw)
                    self.trials[trial.viewers] = trial

    def bounds(self) -> tuple[int, int]:
        """(largest count that held, smallest that failed) among the trials so far."""
        held = [n for n, t in self.trials.items() if t.holds]
        failed = [n for n, t in self.trials.items() if not t.holds]
        lo = max(held, default=0)
        hi = min((n for n in failed if n > lo), default=self.max_viewers + 1)
        return lo, hi

    def next_count(self) -> int | None:
        lo, hi = self.bounds()
        if self.max_viewers not in self.trials:
            return self.max_viewers
        if lo >= self.max_viewers or hi - lo <= self.resolution:
            return None
        mid = (lo + hi) // 2
        step = max(1, self.resolution // 2)
        mid = max(lo + 1, min(hi - 1, round(mid / step) * step))
        return mid if mid not in self.trials else None

    async def run(self) -> tuple[int | None, bool]:
        while True:
            count = self.next_count()
            if count is None:
                break
            experiment = trial_experiment(self.base, count, self.p99_ms, self.shape)
            run_dir = self.out / "trials" / str(count)
            started = time.monotonic()
            doc = await self.run_trial(experiment, run_dir)
            trial = self._trial(count, doc, run_dir, time.monotonic() - started)
            self.trials[count] = trial
            self.echo(trial.line())
            self.save(done=False)
        lo, _hi = self.bounds()
        answer = lo if lo > 0 else None
        self.save(done=True)
        return answer, True

    def _trial(self, count: int, doc: dict[str, Any], run_dir: Path, elapsed: float) -> Trial:
        phases = doc.get("latency_by_phase") or {}
        p99 = {k: (phases.get(k) or {}).get("p99") for k in ("steady", "faults", "settle")}
        reasons = [str(v) for v in doc.get("violations", [])]
        if doc.get("error"):
            reasons.insert(0, f"error: {doc['error']}")
        return Trial(viewers=count, verdict=str(doc.get("verdict")),
                     holds=doc.get("verdict") == "pass", p99_ms=p99,
                     lost=int((doc.get("totals") or {}).get("lost", 0)), reasons=reasons,
                     run_dir=str(run_dir), elapsed_s=round(elapsed, 1),
                     cpu={k: (doc.get("cpu") or {}).get(k) for k in
                          ("deliveries_per_s", "run_cores", "machine_busy_pct")})

    def save(self, done: bool) -> None:
        lo, hi = self.bounds()
        answer = lo if lo > 0 else None
        trials = sorted(self.trials.values(), key=lambda t: t.viewers)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "capacity.json").write_text(json.dumps({
            "file": self.file, "p99_ms": self.p99_ms, "max_viewers": self.max_viewers,
            "resolution": self.resolution, "answer": answer,
            "smallest_failing": hi if hi <= self.max_viewers else None, "done": done,
            "trials": [dataclasses.asdict(t) for t in trials]}, indent=2))
        (self.out / "capacity.md").write_text(render_capacity(
            self.file, self.p99_ms, self.max_viewers, trials, answer, done, self.shape))
