"""Sizes, trial counts and time limits of a quick and a full run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    # change cost: live grant counts, and (trials, seconds) per series
    change_sizes: tuple[int, ...]
    change_trials: int
    baseline_trials: int
    series_seconds: float
    # new-connection latency: live grants and interleaved rounds
    latency_grants: int
    latency_rounds: int
    latency_seconds: float
    # expiry: concurrent ztb trials; baseline job interval, trials and the computed interval
    expiry_trials: int
    baseline_interval_s: float
    baseline_expiry_trials: int
    production_interval_s: float
    # the running product: access cycles (count, seconds), sessions for the agent's RSS
    access_cycles: int
    access_seconds: float
    broker_agent_sessions: int
    rss_steady_s: float
    # broker capacity: lifecycles (count, seconds) per mode, long-polling agents, seconds
    capacity_modes: tuple[str, ...]
    capacity_lifecycles: int
    capacity_seconds: float
    fanout_agents: int
    fanout_seconds: float


QUICK = Mode(
    name="quick",
    change_sizes=(1, 100, 1_000),
    change_trials=30,
    baseline_trials=10,
    series_seconds=1.5,
    latency_grants=1_000,
    latency_rounds=200,
    latency_seconds=4.0,
    expiry_trials=10,
    baseline_interval_s=2.0,
    baseline_expiry_trials=5,
    production_interval_s=60.0,
    access_cycles=2,
    access_seconds=5.0,
    broker_agent_sessions=20,
    rss_steady_s=1.0,
    capacity_modes=("https",),
    capacity_lifecycles=30,
    capacity_seconds=3.0,
    fanout_agents=20,
    fanout_seconds=30.0,
)

FULL = Mode(
    name="full",
    change_sizes=(1, 100, 1_000, 10_000),
    change_trials=200,
    baseline_trials=40,
    series_seconds=30.0,
    latency_grants=10_000,
    latency_rounds=2_000,
    latency_seconds=120.0,
    expiry_trials=100,
    baseline_interval_s=5.0,
    baseline_expiry_trials=24,
    production_interval_s=60.0,
    access_cycles=100,
    access_seconds=180.0,
    broker_agent_sessions=100,
    rss_steady_s=3.0,
    capacity_modes=("https", "http", "asgi"),
    capacity_lifecycles=2_000,
    capacity_seconds=30.0,
    fanout_agents=1_000,
    fanout_seconds=170.0,
)
