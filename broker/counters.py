"""The per-grant counters of a session: one key format, written from the agent's report
and read back into the homeowner's per-grant usage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netpolicy import Grant


def counter_key(device_ip: str, proto: str, ports: str) -> str:
    """Where one reported nft element's counters are kept on its session."""
    return f"{device_ip} {proto}/{ports}"


def _counted(key: str) -> tuple[str, str, int]:
    device_ip, _, rest = key.partition(" ")
    proto, _, ports = rest.partition("/")
    return device_ip, proto, int(ports.partition("-")[0] or 0)


def grant_usage(
    grants: list[dict[str, Any]], counters: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per-grant packets/bytes: the agent's element counters summed into each grant."""
    usage = []
    for stored in grants:
        grant = Grant.from_dict(stored)
        packets = octets = 0
        for key, value in counters.items():
            device_ip, proto, first = _counted(key)
            if device_ip == str(grant.device_ip) and proto == grant.proto and first in grant.ports:
                packets += int(value["packets"])
                octets += int(value["bytes"])
        usage.append({"grant": str(grant), **stored, "packets": packets, "bytes": octets})
    return usage
