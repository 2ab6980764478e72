"""Plain words for what a grant reaches, so a homeowner can judge a request without jargon."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What a technician usually reaches on a port; unknown ports are shown by number only.
PORT_WORDS: dict[tuple[str, int], str] = {
    ("tcp", 22): "SSH (remote command line)",
    ("tcp", 23): "Telnet (old, unencrypted command line)",
    ("tcp", 80): "web page",
    ("tcp", 443): "web page",
    ("tcp", 554): "camera stream (RTSP)",
    ("tcp", 1883): "MQTT (smart-home messages)",
    ("tcp", 8883): "MQTT over TLS (smart-home messages)",
    ("tcp", 502): "Modbus (heating and energy controllers)",
    ("tcp", 3389): "Remote Desktop",
    ("tcp", 5900): "screen sharing (VNC)",
    ("tcp", 8080): "web page",
    ("tcp", 8443): "web page",
    ("tcp", 8123): "Home Assistant",
    ("udp", 53): "name lookups (DNS)",
    ("udp", 161): "device monitoring (SNMP)",
    ("udp", 1900): "device discovery (UPnP)",
    ("udp", 5353): "device discovery (mDNS)",
    ("udp", 47808): "building automation (BACnet)",
}

_UNITS = (("hour", 3600), ("minute", 60), ("second", 1))


def duration_words(seconds: int | float) -> str:
    """``5400`` → ``1 hour 30 minutes``; zero or less → ``0 seconds``."""
    rest = max(0, int(seconds))
    parts = []
    for name, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return " ".join(parts) or "0 seconds"


def ports_words(proto: str, ports: str) -> str:
    """``tcp``, ``443`` → ``web page, port 443``; ranges and UDP are said as such."""
    first, _, last = ports.partition("-")
    label = "UDP port" if proto == "udp" else "port"
    if last and last != first:
        return f"{label}s {first} to {last}"
    what = PORT_WORDS.get((proto, int(first))) if first.isdigit() else None
    return f"{what}, {label} {first}" if what else f"{label} {first}"


def grant_words(grant: Mapping[str, Any]) -> str:
    """One session grant (API shape ``{device, device_ip, proto, ports}``) in plain words:
    ``Thermostat (192.168.1.20): web page, port 443``."""
    device = str(grant.get("device") or "device")
    where = f"{device} ({grant['device_ip']})" if grant.get("device_ip") else device
    return f"{where}: {ports_words(str(grant.get('proto', 'tcp')), str(grant.get('ports', '')))}"


def spec_words(spec: str) -> str:
    """A grant as typed (``thermostat:tcp/443``) in plain words, for pending escalations."""
    device, _, rest = spec.partition(":")
    proto, _, ports = rest.partition("/")
    return f"{device}: {ports_words(proto, ports)}" if ports else spec


STATE_LABELS: dict[str, tuple[str, str]] = {
    # state → (icon, words); the icon is decoration, the words carry the meaning.
    "requested": ("◷", "Waiting for approval"),
    "approved": ("✔", "Approved, connecting"),
    "active": ("●", "Active"),
    "ended": ("■", "Ended"),
}

END_REASON_WORDS: dict[str, str] = {
    "denied": "denied by the homeowner",
    "revoked": "ended early",
    "expired": "time ran out",
    "cancelled": "withdrawn by the technician",
}


def state_words(state: str, end_reason: str | None = None) -> str:
    _, words = STATE_LABELS.get(state, ("", state))
    if state == "ended" and end_reason:
        return f"{words}: {END_REASON_WORDS.get(end_reason, end_reason)}"
    return words


def byte_words(count: int | float | None) -> str:
    """``1536`` → ``1.5 KB``: counters a person can read at a glance."""
    value = float(count or 0)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
