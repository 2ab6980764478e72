"""Summaries of repeated trials, and the bounded loop that collects them.

p99 is the nearest-rank percentile: with fewer than 100 trials it is the maximum, which is
what a reader should assume anyway.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): always one of the observed values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and p99 of one series, with the number of trials behind them."""

    trials: int
    median: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("cannot summarise an empty series")
        return cls(
            trials=len(values),
            median=statistics.median(values),
            p99=percentile(values, 99),
            minimum=min(values),
            maximum=max(values),
        )

    def scaled(self, factor: float) -> Summary:
        """The same series in another unit (seconds to milliseconds, say)."""
        return Summary(
            self.trials,
            self.median * factor,
            self.p99 * factor,
            self.minimum * factor,
            self.maximum * factor,
        )


def bounded_trials(trial: Callable[[], float], count: int, seconds: float) -> list[float]:
    """Run ``trial`` until ``count`` results or ``seconds`` have passed, whichever is first.

    At least one trial always runs, so a slow machine yields a short series, never none.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    deadline = time.monotonic() + seconds
    results: list[float] = []
    while len(results) < count:
        results.append(trial())
        if time.monotonic() >= deadline:
            break
    return results
