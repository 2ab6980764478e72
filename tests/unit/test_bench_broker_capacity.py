"""The broker capacity load generator runs end to end (tiny sizes; the figures come from
``python -m lab.bench.broker_capacity``)."""

from __future__ import annotations

import pytest

from lab.bench.broker_capacity import fanout, lifecycles_per_second


@pytest.mark.parametrize("mode", ["asgi", "http"])
def test_lifecycles_are_counted(mode: str) -> None:
    result = lifecycles_per_second(6, 60, concurrency=2, mode=mode)
    assert result["lifecycles"] == 6 and result["lifecycles_per_s"] > 0
    assert set(result["latency_ms"]) == {"request", "approve", "config", "revoke"}
    if mode == "http":
        assert result["broker_memory"]["max_rss_mb"] > 0


def test_fanout_wakes_every_agent_over_mtls() -> None:
    result = fanout(4, 120)
    assert result["agents"] == 4 and result["wake_s"]["n"] == 4
    assert 0 < result["all_woken_s"] < 30


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        lifecycles_per_second(1, 1, concurrency=0)
    with pytest.raises(ValueError, match="mode"):
        lifecycles_per_second(1, 1, mode="carrier-pigeon")
