"""Benchmark rows built from results measured elsewhere: nothing is invented on the way."""

from __future__ import annotations

import json

import pytest

from lab.bench import capacity
from lab.bench.modes import QUICK
from lab.bench.product import with_private_key
from lab.bench.results import Figure, Measurement, Reported, markdown

WAKE = {"n": 30, "median": 0.15, "p99": 0.4, "max": 0.4}
STEP = {"n": 40, "median": 70.0, "p99": 150.0, "max": 151.0}


def _lifecycles(per_s: float) -> dict[str, object]:
    return {
        "mode": "https",
        "concurrency": 8,
        "database": "sqlite (WAL, synchronous=normal)",
        "lifecycles": 40,
        "seconds": 1.5,
        "lifecycles_per_s": per_s,
        "latency_ms": {"request": STEP, "approve": STEP},
        "broker_memory": {"rss_mb": 100.0, "max_rss_mb": 107.0},
    }


def _fan(rss: float) -> dict[str, object]:
    return {
        "agents": 30,
        "connect_all_s": 1.0,
        "enroll_s": 0.5,
        "wake_s": WAKE,
        "broker_memory": {"rss_mb": rss, "max_rss_mb": rss},
    }


def test_reported_series_keep_their_trials_and_carry_no_minimum() -> None:
    figure = Figure("wake", "s", reported=Reported(30, 0.15, 0.4, 0.4))
    data = figure.to_dict()
    assert data == {"name": "wake", "unit": "s", "trials": 30, "median": 0.15, "p99": 0.4,
                    "max": 0.4}  # fmt: skip
    assert "| C | wake | 30 | 0.15 | 0.4 | s |" in markdown(
        [Measurement("c", "C", figures=[figure])]
    )


def test_capacity_row_judges_each_goal() -> None:
    row = capacity.report(QUICK, {"https": _lifecycles(26.0)}, _fan(350.0))
    verdicts = {ratio.name: ratio.passed for ratio in row.ratios}
    assert verdicts == {
        "lifecycles/s, https": False,
        "fan-out p99, 30 agents": True,
        "broker max RSS, 30 agents": False,
    }
    fanout = next(f for f in row.figures if f.name.startswith("fan-out"))
    assert fanout.reported == Reported(30, 0.15, 0.4, 0.4)
    json.dumps(row.to_dict())  # the whole row serialises


def test_private_key_goes_into_the_placeholder_only() -> None:
    config = "[Interface]\nPrivateKey = <your private key>\nAddress = 10.77.0.2/32\n"
    filled = with_private_key(config, "KEY=")
    assert "PrivateKey = KEY=\n" in filled and "<your private key>" not in filled
    with pytest.raises(RuntimeError, match="placeholder"):
        with_private_key(filled, "OTHER=")
