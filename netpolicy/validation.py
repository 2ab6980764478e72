"""Checks that keep a grant pointed at a real LAN device and a session inside its caps."""

from __future__ import annotations

import base64
import binascii
import re
from ipaddress import IPv4Network, IPv6Network, ip_network

from .errors import PolicyError
from .grants import IPAddress, parse_ip

HARD_MAX_DURATION_S = 8 * 3600
DEFAULT_MAX_DURATION_S = 3600
_DURATION = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")  # ASCII digits only

IPNetwork = IPv4Network | IPv6Network


def parse_duration(text: str) -> int:
    """Seconds from ``90``, ``30m``, ``1h30m`` or ``45s``."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    match = _DURATION.fullmatch(text)
    if not text or not match:
        raise PolicyError(f"duration must look like 30m, 1h30m or 90s, not {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{value}{unit}" for value, unit in parts if value) or "0s"


def validate_duration(seconds: int, max_seconds: int = DEFAULT_MAX_DURATION_S) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise PolicyError(f"duration must be whole seconds, not {seconds!r}")
    if seconds <= 0:
        raise PolicyError("duration must be longer than zero")
    cap = min(max_seconds, HARD_MAX_DURATION_S)
    if seconds > cap:
        raise PolicyError(f"duration {seconds}s is over this home's cap of {cap}s")
    return seconds


def parse_network(text: str) -> IPNetwork:
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        raise PolicyError(f"not a network in CIDR form: {exc}") from None


def parse_address(text: str) -> IPAddress:
    try:
        return parse_ip(text)
    except ValueError:
        raise PolicyError(f"not an IP address: {text!r}") from None


def validate_lan(lan: IPNetwork) -> IPNetwork:
    """A home LAN is a private unicast range with room for a router and a device."""
    if not lan.is_private or lan.is_loopback or lan.is_link_local or lan.is_multicast:
        raise PolicyError(f"LAN {lan} must be a private unicast range")
    if lan.num_addresses < 4:
        raise PolicyError(f"LAN {lan} is too small (need at least a /30 or /126)")
    if lan.prefixlen == 0:
        raise PolicyError("LAN may not be the whole address space")
    return lan


def validate_device_ip(ip: IPAddress, lan: IPNetwork, router_ip: IPAddress | None) -> IPAddress:
    """A grant may only point at an ordinary host inside the home LAN, never the router."""
    if ip.version != lan.version or ip not in lan:
        raise PolicyError(f"device address {ip} is not inside the home LAN {lan}")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        raise PolicyError(f"device address {ip} is not a unicast host address")
    if ip == lan.network_address:
        raise PolicyError(f"device address {ip} is the LAN's network address")
    if lan.version == 4 and ip == lan.broadcast_address:
        raise PolicyError(f"device address {ip} is the LAN's broadcast address")
    if router_ip is not None and ip == router_ip:
        raise PolicyError(f"device address {ip} is the router itself")
    return ip


def validate_public_key(text: str) -> str:
    """A WireGuard public key: 32 bytes, base64 with padding (as ``wg pubkey`` prints)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("WireGuard key must be base64") from None
    if len(raw) != 32 or len(text) != 44:
        raise PolicyError("WireGuard key must be 32 bytes in base64 (44 characters)")
    return text
