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


# X25519 public values of small order, as libsodium's ``has_small_order`` lists them (the
# last byte compared without its top bit, which X25519 ignores): 0, 1, the two points of
# order 8, p-1, p and p+1. A peer key among them makes the Diffie-Hellman result a known
# value (all zeros for most), so the handshake's secrecy would rest on the PSK alone.
_LOW_ORDER_POINTS = frozenset(
    bytes.fromhex(point)
    for point in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def validate_wireguard_key(text: str) -> bytes:
    """Any WireGuard key (private, public, preshared): 32 bytes in padded base64, as ``wg``
    prints them. Returns the bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise PolicyError("WireGuard key must be base64") from None
    if len(raw) != 32 or len(text) != 44:
        raise PolicyError("WireGuard key must be 32 bytes in base64 (44 characters)")
    return raw


def validate_public_key(text: str) -> str:
    """A WireGuard public key (as ``wg pubkey`` prints it) that is not a low-order point."""
    raw = validate_wireguard_key(text)
    if raw[:31] + bytes([raw[31] & 0x7F]) in _LOW_ORDER_POINTS:
        raise PolicyError(
            "WireGuard public key is a low-order point (such as all zeros): no key pair has it"
        )
    return text
