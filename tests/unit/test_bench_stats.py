"""The benchmark's pure helpers: percentiles, bounded loops, drop detection, verdicts."""

from __future__ import annotations

import itertools

import pytest

from lab.bench.results import Figure, Measurement, Ratio, markdown
from lab.bench.stats import Summary, bounded_trials, percentile
from lab.bench.udp_probe import first_drop


def test_p99_is_nearest_rank_and_the_maximum_below_100_trials() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_summary_and_scaling() -> None:
    summary = Summary.of([0.001, 0.002, 0.003]).scaled(1000)
    assert (summary.trials, summary.median, summary.p99) == (3, 2.0, 3.0)
    assert summary.minimum == 1.0


def test_bounded_trials_stops_at_the_count() -> None:
    counter = itertools.count()
    assert len(bounded_trials(lambda: float(next(counter)), 5, 60.0)) == 5


def test_bounded_trials_stops_at_the_time_limit_but_runs_once() -> None:
    assert len(bounded_trials(lambda: 1.0, 1000, 0.0)) == 1


def test_first_drop_is_the_probe_after_the_last_arrival() -> None:
    sent = [0.0, 0.01, 0.02, 0.03, 0.04]
    assert first_drop(sent, {0, 2}) == 0.03  # the early loss of probe 1 is ignored
    assert first_drop(sent, {0, 1, 2, 3, 4}) is None  # never dropped
    assert first_drop(sent, set()) is None  # nothing arrived: says nothing about expiry


def test_ratio_verdicts() -> None:
    assert Ratio("r", 1.5, "x", "<=", 2).passed is True
    assert Ratio("r", 15, "x", ">=", 20).passed is False
    assert Ratio("r", 3.0).passed is None


def test_markdown_shows_unmeasured_rows_without_numbers() -> None:
    rows = [
        Measurement("a", "A", figures=[Figure("f", "ms", Summary.of([1.0, 2.0]))]),
        Measurement("b", "B", status="not measured", why="no broker yet"),
    ]
    text = markdown(rows)
    assert "| A | f | 2 | 1.5 | 2 | ms |" in text
    assert "**not measured**: no broker yet" in text
