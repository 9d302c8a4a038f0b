"""Time series for the charts, on the run's one time base (seconds since the run started).

Pure functions, no UI: a chart asks for a fixed number of seconds per column (the smallest
step of ``STEPS`` that fits the run into its width), columns cover ``[i * step, (i + 1) *
step)`` from the start of the run, and each column aggregates the samples that fall in it
(``rate``: the delivered count's increase over the time it took; ``max``: the largest sample).
A column with no sample is None and is drawn empty: a gap in the data stays visible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

__all__ = ["STEPS", "bin_max", "bin_rate", "nice_ceiling", "rates", "seconds_per_column"]

STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def seconds_per_column(span_s: float, columns: int) -> int:
    """The smallest step of STEPS that shows ``span_s`` seconds in ``columns`` columns."""
    if columns <= 0:
        return STEPS[-1]
    for step in STEPS:
        if math.ceil(max(span_s, 1e-9) / step) <= columns:
            return step
    return STEPS[-1]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= value (an axis maximum); 1 for value <= 0."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for base in (1, 2, 2.5, 5, 10):
        candidate = base * 10.0 ** exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exponent + 1)


def rates(samples: Sequence[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """(t0, t1, increase) between consecutive (t, total) samples with t1 > t0; a total that
    goes down (a counter reset) counts from zero."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t1 > t0:
            out.append((t0, t1, v1 - v0 if v1 >= v0 else v1))
    return out


def bin_rate(samples: Sequence[tuple[float, float]], step: float, columns: int
             ) -> list[float | None]:
    """Per column, the total's increase per second over the intervals ending in it."""
    amount = [0.0] * columns
    seconds = [0.0] * columns
    for t0, t1, increase in rates(samples):
        column = int(t1 // step)
        if 0 <= column < columns:
            amount[column] += increase
            seconds[column] += t1 - t0
    return [a / s if s > 0 else None for a, s in zip(amount, seconds, strict=True)]


def bin_max(samples: Sequence[tuple[float, float | None]], step: float, columns: int
            ) -> list[float | None]:
    """Per column, the largest sample in it."""
    out: list[float | None] = [None] * columns
    for t, value in samples:
        column = int(t // step)
        if value is None or not 0 <= column < columns:
            continue
        current = out[column]
        out[column] = value if current is None else max(current, value)
    return out
