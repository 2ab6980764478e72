"""The agent's report: the only thing the agent sends the broker about the kernel.

The broker stores what a report says and shows it to the homeowner, so a report is input
from a machine the broker does not control: every field is typed, every number finite
and bounded, every list bounded, and anything unknown or ill-typed is refused with a
message naming the field (``AgentReport.from_dict``). The agent builds its reports with
the same classes, so it cannot send what the broker would refuse.

Versioned like ``model.py``: bump ``REPORT_VERSION`` and log the change here.

- 1 (2026-12): first typed version. A report without ``version`` is read as 1 (agents
  before the field sent the same shape). ``final`` marks counters read just before their
  element left the kernel (revoke, expiry): the last word on that element.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import PolicyError
from .grants import IPAddress, PortRange, Proto, parse_ip, parse_proto
from .validation import validate_public_key

REPORT_VERSION = 1
MAX_PEERS = 4096
MAX_ELEMENTS = 65536
MAX_REVISION = 2**63 - 1  # a signed 64-bit database column
MAX_COUNTER = 2**64 - 1  # the kernel's counters are unsigned 64-bit
MAX_HANDSHAKE_S = 253402300799.0  # 9999-12-31T23:59:59Z: the last second a datetime holds
_SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_T = TypeVar("_T")


def _integer(value: object, what: str, high: int) -> int:
    """A JSON integer 0..``high``; booleans and floats (even ``1.0``) are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise PolicyError(f"report: {what} must be an integer from 0 to {high}, not {value!r}")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"report: {what} must be a string, not {value!r}")
    return value


def _fields(data: object, what: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    """``data`` as a JSON object with exactly the named fields (the optional may be absent)."""
    if not isinstance(data, dict):
        raise PolicyError(f"report: {what} must be a JSON object")
    unknown = sorted(str(name) for name in data.keys() - required - optional)
    if unknown:
        raise PolicyError(f"report: {what} has unknown field {unknown[0]!r}")
    missing = sorted(required - data.keys())
    if missing:
        raise PolicyError(f"report: {what} needs the field {missing[0]!r}")
    return data


def _list(data: object, what: str, limit: int, item: Callable[[object], _T]) -> tuple[_T, ...]:
    if not isinstance(data, list):
        raise PolicyError(f"report: {what} must be a list")
    if len(data) > limit:
        raise PolicyError(f"report: {what} may hold at most {limit} entries, not {len(data)}")
    return tuple(item(entry) for entry in data)


@dataclass(frozen=True, slots=True)
class PeerReport:
    """One session's WireGuard peer: when it last shook hands and the bytes it moved."""

    public_key: str
    last_handshake: float | None = None  # Unix seconds; None: never
    rx_bytes: int = 0
    tx_bytes: int = 0

    def __post_init__(self) -> None:
        validate_public_key(self.public_key)
        handshake = self.last_handshake
        if handshake is not None and (
            isinstance(handshake, bool)
            or not isinstance(handshake, int | float)
            or not math.isfinite(handshake)
            or not 0 <= handshake <= MAX_HANDSHAKE_S
        ):
            raise PolicyError(
                f"report: last_handshake must be Unix seconds from 0 to {MAX_HANDSHAKE_S:.0f}"
                f" or null, not {handshake!r}"
            )
        _integer(self.rx_bytes, "rx_bytes", MAX_COUNTER)
        _integer(self.tx_bytes, "tx_bytes", MAX_COUNTER)

    def to_dict(self) -> dict[str, Any]:
        return {
            "public_key": self.public_key,
            "last_handshake": self.last_handshake,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
        }

    @classmethod
    def from_dict(cls, data: object) -> PeerReport:
        peer = _fields(data, "a peer", {"public_key"}, {"last_handshake", "rx_bytes", "tx_bytes"})
        return cls(
            public_key=_string(peer["public_key"], "public_key"),
            last_handshake=peer.get("last_handshake"),
            rx_bytes=peer.get("rx_bytes", 0),
            tx_bytes=peer.get("tx_bytes", 0),
        )


@dataclass(frozen=True, slots=True)
class ElementCounters:
    """The kernel's counters of one grant element (device, protocol, ports) of a session."""

    session_id: str
    device_ip: IPAddress
    proto: Proto
    ports: PortRange
    packets: int
    bytes: int
    final: bool = False  # read just before the element left the kernel: no later reading

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, str) or not _SESSION_ID.fullmatch(self.session_id):
            raise PolicyError(
                f"report: session_id must be 1-64 of A-Z a-z 0-9 _ . -, not {self.session_id!r}"
            )
        _integer(self.packets, "packets", MAX_COUNTER)
        _integer(self.bytes, "bytes", MAX_COUNTER)
        if not isinstance(self.final, bool):
            raise PolicyError(f"report: final must be true or false, not {self.final!r}")

    @property
    def key(self) -> tuple[str, IPAddress, Proto, PortRange]:
        """Which element this is: a later reading of the same key replaces this one."""
        return self.session_id, self.device_ip, self.proto, self.ports

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "device_ip": str(self.device_ip),
            "proto": self.proto,
            "ports": str(self.ports),
            "packets": self.packets,
            "bytes": self.bytes,
            "final": self.final,
        }

    @classmethod
    def from_dict(cls, data: object) -> ElementCounters:
        names = {"session_id", "device_ip", "proto", "ports", "packets", "bytes"}
        element = _fields(data, "an element", names, {"final"})
        device_text = _string(element["device_ip"], "device_ip")
        try:
            device_ip = parse_ip(device_text)
        except ValueError:
            raise PolicyError(f"report: not an IP address: {device_text!r}") from None
        return cls(
            session_id=_string(element["session_id"], "session_id"),
            device_ip=device_ip,
            proto=parse_proto(_string(element["proto"], "proto")),
            ports=PortRange.parse(_string(element["ports"], "ports")),
            packets=element["packets"],
            bytes=element["bytes"],
            final=element.get("final", False),
        )


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What one agent applied and saw: ``POST /v1/agent/report``."""

    revision: int
    peers: tuple[PeerReport, ...] = ()
    elements: tuple[ElementCounters, ...] = ()
    version: int = REPORT_VERSION

    def __post_init__(self) -> None:
        if self.version != REPORT_VERSION:
            raise PolicyError(f"unsupported report version {self.version!r}")
        _integer(self.revision, "revision", MAX_REVISION)
        if len(self.peers) > MAX_PEERS or len(self.elements) > MAX_ELEMENTS:
            raise PolicyError(
                f"report: at most {MAX_PEERS} peers and {MAX_ELEMENTS} elements per report"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "revision": self.revision,
            "peers": [peer.to_dict() for peer in self.peers],
            "elements": [element.to_dict() for element in self.elements],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object) -> AgentReport:
        report = _fields(data, "the report", {"revision"}, {"version", "peers", "elements"})
        version = report.get("version", REPORT_VERSION)
        if isinstance(version, bool) or version != REPORT_VERSION:
            raise PolicyError(f"unsupported report version {version!r}")
        return cls(
            revision=report["revision"],
            peers=_list(report.get("peers", []), "peers", MAX_PEERS, PeerReport.from_dict),
            elements=_list(
                report.get("elements", []), "elements", MAX_ELEMENTS, ElementCounters.from_dict
            ),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AgentReport:
        try:
            data = json.loads(text)
        except ValueError as exc:  # bad JSON, bad UTF-8, an integer of over 4300 digits
            raise PolicyError(f"report is not valid JSON: {exc}") from None
        except RecursionError:
            raise PolicyError("report is nested too deeply") from None
        return cls.from_dict(data)
