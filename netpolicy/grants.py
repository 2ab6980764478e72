"""Grants: the (device, protocol, ports) triples a session may reach."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

from .errors import PolicyError

Proto = Literal["tcp", "udp"]
PROTOCOLS: tuple[Proto, ...] = ("tcp", "udp")
IPAddress = IPv4Address | IPv6Address

# Exactly the strings IPv4Address accepts: four ASCII decimal octets 0-255, no leading zeros.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")  # ASCII digits: int() takes any script's
_GRANT_SPEC = re.compile(
    r"^(?P<device>[A-Za-z0-9][A-Za-z0-9_.-]{0,62}):(?P<proto>[a-z]+)/(?P<ports>\S+)$"
)


def parse_ip(text: str) -> IPAddress:
    """``ipaddress.ip_address``, with a fast path for a dotted-quad IPv4 string.

    ``ip_address`` parses each octet in Python; one regex match is ~1.6x faster, and a
    document carries tens of thousands of addresses. Text the pattern refuses takes the
    standard path, so the result and every error are ``ip_address``'s.
    """
    if isinstance(text, str) and _DOTTED_QUAD.fullmatch(text):  # callers may pass JSON values
        a, b, c, d = text.split(".")
        return IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))
    return ip_address(text)


def parse_proto(text: str) -> Proto:
    if text not in PROTOCOLS:
        raise PolicyError(f"protocol must be tcp or udp, not {text!r}")
    return text


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive range of transport ports; a single port has first == last."""

    first: int
    last: int

    def __post_init__(self) -> None:
        for port in (self.first, self.last):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise PolicyError(f"port must be an integer from 1 to 65535, not {port!r}")
        if self.first > self.last:
            raise PolicyError(f"port range {self.first}-{self.last} is reversed")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """Accept ``443`` or ``8000-8010``: ASCII digits only, no sign, space or ``_``."""
        match = _PORTS.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise PolicyError(f"ports must look like 443 or 8000-8010, not {text!r}")
        low = int(match[1])
        return cls(low, int(match[2]) if match[2] else low)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def covers(self, other: PortRange) -> bool:
        return self.first <= other.first and other.last <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """A grant as a person writes it, naming the device: ``thermostat:tcp/443``."""

    device: str
    proto: Proto
    ports: PortRange

    @classmethod
    def parse(cls, text: str) -> GrantSpec:
        match = _GRANT_SPEC.match(text.strip())
        if not match:
            raise PolicyError(f"grant must look like DEVICE:tcp/PORT[-PORT], not {text!r}")
        return cls(
            device=match["device"],
            proto=parse_proto(match["proto"]),
            ports=PortRange.parse(match["ports"]),
        )

    def __str__(self) -> str:
        return f"{self.device}:{self.proto}/{self.ports}"


@dataclass(frozen=True, slots=True)
class Grant:
    """A resolved grant: what the router enforces. ``device`` is only a label."""

    device_ip: IPAddress
    proto: Proto
    ports: PortRange
    device: str = field(default="", compare=False)

    @property
    def family(self) -> int:
        return self.device_ip.version

    def sort_key(self) -> tuple[int, int, str, int, int]:
        return (self.family, int(self.device_ip), self.proto, self.ports.first, self.ports.last)

    def to_dict(self) -> dict[str, object]:
        return {
            "device": self.device,
            "device_ip": str(self.device_ip),
            "proto": self.proto,
            "ports": str(self.ports),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Grant:
        try:
            device_ip = str(data["device_ip"])
        except KeyError as exc:
            raise PolicyError(f"grant needs a valid device_ip: {exc}") from None
        proto, ports = str(data.get("proto", "")), str(data.get("ports", ""))
        return _grant_from_text(device_ip, proto, ports, str(data.get("device", "")))

    def __str__(self) -> str:
        label = f"{self.device} " if self.device else ""
        return f"{label}{self.device_ip} {self.proto}/{self.ports}"


@functools.lru_cache(maxsize=1024)
def _grant_from_text(device_ip: str, proto: str, ports: str, device: str) -> Grant:
    """``Grant.from_dict``'s parsing, memoised: sessions of a home share grants, each
    long-poll answer repeats the previous document, and a Grant is immutable. Errors are
    not cached, so bad input fails every time with the same message."""
    try:
        ip = parse_ip(device_ip)
    except ValueError as exc:
        raise PolicyError(f"grant needs a valid device_ip: {exc}") from None
    return Grant(ip, parse_proto(proto), PortRange.parse(ports), device)


def merge_grants(grants: tuple[Grant, ...] | list[Grant]) -> tuple[Grant, ...]:
    """Merge overlapping or adjacent port ranges per (device, proto).

    Interval sets refuse overlapping elements, and two spellings of the same access must
    compile to the same kernel state.
    """
    if len(grants) < 2:
        return tuple(grants)
    ordered = sorted(grants, key=Grant.sort_key)
    merged: list[Grant] = []
    for grant in ordered:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.device_ip == grant.device_ip
            and last.proto == grant.proto
            and grant.ports.first <= last.ports.last + 1
        ):
            ports = PortRange(last.ports.first, max(last.ports.last, grant.ports.last))
            merged[-1] = Grant(last.device_ip, last.proto, ports, last.device or grant.device)
        else:
            merged.append(grant)
    return tuple(merged)
