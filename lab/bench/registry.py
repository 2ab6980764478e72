"""The table of measurements a run performs, in order. Each takes the mode and a unique
namespace prefix and returns one :class:`Measurement` (measured, or not and why)."""

from __future__ import annotations

from collections.abc import Callable

from . import capacity, change_cost, end_to_end, expiry, latency, relay
from .modes import Mode
from .results import Measurement

MeasureFn = Callable[[Mode, str], Measurement]

MEASUREMENTS: dict[str, MeasureFn] = {
    "change_cost": change_cost.measure,
    "connect_latency": latency.measure,
    "expiry": expiry.measure,
    "revocation_latency": end_to_end.revocation_latency,
    "time_to_access": end_to_end.time_to_access,
    "broker_capacity": capacity.measure,
    "agent_rss": end_to_end.agent_rss,
    "relay_vs_direct": relay.relay_vs_direct,
    "relay_capacity": relay.relay_capacity,
}
