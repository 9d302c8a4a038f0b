"""The charts' time series: a fixed time per column on the run's time base, round axes."""

from __future__ import annotations

import pytest

from tui.series import bin_max, bin_rate, nice_ceiling, rates, seconds_per_column
from tui.widgets.charts import render_columns


def test_the_step_is_the_smallest_that_fits_the_run() -> None:
    assert seconds_per_column(30, 60) == 1
    assert seconds_per_column(60, 60) == 1
    assert seconds_per_column(61, 60) == 2
    assert seconds_per_column(299, 60) == 5
    assert seconds_per_column(3 * 3600, 60) == 300
    assert seconds_per_column(0, 60) == 1


def test_axis_tops_are_round_numbers_above_the_data() -> None:
    assert nice_ceiling(44) == 50
    assert nice_ceiling(923) == 1000
    assert nice_ceiling(32.9e6) == 50e6
    assert nice_ceiling(20) == 20
    assert nice_ceiling(0) == 1.0


def test_the_rate_of_a_column_is_the_increase_over_the_time_it_took() -> None:
    samples = [(0.5, 0.0), (1.5, 10.0), (2.5, 30.0), (4.6, 70.0)]
    assert rates(samples) == [(0.5, 1.5, 10.0), (1.5, 2.5, 20.0), (2.5, 4.6, 40.0)]
    # column 3 has no sample ending in it: a gap, not a zero
    assert bin_rate(samples, 1, 6) == [None, 10.0, 20.0, None, pytest.approx(40 / 2.1), None]
    assert bin_rate(samples, 5, 1) == [pytest.approx(70 / 4.1)]


def test_a_counter_that_restarts_counts_from_zero() -> None:
    assert rates([(0.0, 100.0), (1.0, 5.0)]) == [(0.0, 1.0, 5.0)]


def test_max_per_column_skips_missing_samples() -> None:
    assert bin_max([(0.2, 5.0), (0.7, 9.0), (1.1, None), (2.5, 3.0)], 1, 3) == [9.0, None, 3.0]


def test_bars_use_eighths_of_a_line_and_never_hide_a_nonzero_value() -> None:
    top, bottom = render_columns([0.0, 0.01, 50.0, 100.0, None], 100.0, 2, "")
    assert bottom.plain == "·▁██ "  # a zero is a dot, a missing sample nothing
    assert top.plain == "   █ "
