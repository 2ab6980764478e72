"""The broker-capacity row: ``lab.bench.broker_capacity`` run inside a fresh namespace.

That module's broker listens on 127.0.0.1; calling it with this thread moved into a
namespace the run created (and removes after) keeps its sockets, and the broker child
process it forks, inside the lab.
"""

from __future__ import annotations

from typing import Any

from lab import netns

from . import broker_capacity, rig
from .modes import Mode
from .results import Figure, Measurement, Ratio, Reported
from .stats import Summary

MODE_LABELS = {
    "https": "real HTTPS (uvicorn child process, TLS)",
    "http": "real HTTP (uvicorn child process)",
    "asgi": "in-process (httpx ASGITransport, no sockets)",
}


def _reported(s: dict[str, float]) -> Reported:
    """The module's ``{n, median, p99, max}`` (it keeps the series itself)."""
    return Reported(int(s["n"]), s["median"], s["p99"], s["max"])


def _steps(figures: list[Figure], label: str, latency: dict[str, dict[str, float]]) -> None:
    for step, s in latency.items():
        figures.append(Figure(f"{label}: {step} API call latency", "ms", reported=_reported(s)))


def measure(mode: Mode, prefix: str) -> Measurement:
    lifecycles: dict[str, dict[str, Any]] = {}
    with rig.namespace(f"{prefix}-cap") as ns, netns.inside(ns):
        for how in mode.capacity_modes:
            lifecycles[how] = broker_capacity.lifecycles_per_second(
                mode.capacity_lifecycles, mode.capacity_seconds, mode=how
            )
        fan = broker_capacity.fanout(mode.fanout_agents, mode.fanout_seconds)
    return report(mode, lifecycles, fan)


def report(mode: Mode, lifecycles: dict[str, dict[str, Any]], fan: dict[str, Any]) -> Measurement:
    """The row from the module's results: lifecycles per mode, and the fan-out."""
    m = Measurement("broker_capacity", "Broker capacity (SQLite)")
    first = next(iter(lifecycles.values()))
    m.setup = {
        "lifecycle": "request + approve + wg-quick config + revoke (4 API calls)",
        "database": first["database"],
        "concurrency": first["concurrency"],
        "bounds": f"{mode.capacity_lifecycles} lifecycles or {mode.capacity_seconds:g} s",
        "fanout": f"{fan['agents']} agents enrolled (own client certificates), each "
        "long-polling /v1/agent/state over its own mTLS connection; one approval bumps "
        "the home's revision; wake = time from the approve call to each answer",
        "fanout_connect_all_s": fan["connect_all_s"],
        "fanout_enroll_s": fan["enroll_s"],
        "namespace": "fresh namespace, loopback only",
    }
    for how, result in lifecycles.items():
        m.figures.append(
            Figure(
                f"lifecycles/s, {MODE_LABELS[how]}",
                "1/s",
                Summary.of([result["lifecycles_per_s"]]),
                note=f"one run: {result['lifecycles']} lifecycles in {result['seconds']} s",
            )
        )
        _steps(m.figures, how, result["latency_ms"])
        if "broker_memory" in result:
            m.figures.append(
                Figure(f"broker max RSS after {how} lifecycles", "MB",
                       Summary.of([result["broker_memory"]["max_rss_mb"]]))
            )  # fmt: skip
    wake = fan["wake_s"]
    broker_rss = fan["broker_memory"]["max_rss_mb"]
    m.figures += [
        Figure(
            f"fan-out: approve call -> agent woken, {fan['agents']} agents",
            "s",
            reported=_reported(wake),
        ),
        Figure(
            f"broker max RSS with {fan['agents']} agents long-polling",
            "MB",
            Summary.of([broker_rss]),
        ),
    ]
    for how, result in lifecycles.items():
        m.ratios.append(
            Ratio(f"lifecycles/s, {how}", result["lifecycles_per_s"], "1/s", ">=",
                  broker_capacity.LIFECYCLES_GOAL_PER_S)
        )  # fmt: skip
    m.ratios += [
        Ratio(f"fan-out p99, {fan['agents']} agents", wake["p99"], "s", "<=",
              broker_capacity.FANOUT_P99_GOAL_S),
        Ratio(f"broker max RSS, {fan['agents']} agents", broker_rss, "MB", "<=",
              broker_capacity.BROKER_RSS_GOAL_MB),
    ]  # fmt: skip
    return m
