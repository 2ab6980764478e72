"""The relay's document: which paths a relay forwards, for whom and until when.

A relay path carries one session's WireGuard packets between two UDP ports of the relay:
the technician dials ``technician_port`` (the ``Endpoint`` of its wg-quick file), the home
router's peer for that session dials ``home_port`` with a persistent keepalive. Both ends
dial out, so neither needs an inbound port. The two public keys let the relay check the
``mac1`` field of handshake messages (a keyed hash over the receiver's public key), so
only parties who know the session's keys can teach the relay an address.

Versioned like ``model.DesiredState``:

- 1 (2026-12-01): first version. ``expires_in`` seconds on the broker's clock, as for the
  agent, so relay clock skew neither stretches nor cuts a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import PolicyError
from .validation import HARD_MAX_DURATION_S, validate_public_key

RELAY_PROTOCOL_VERSION = 1
MIN_PORT = 1024


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PORT <= value <= 65535:
        raise PolicyError(f"{what} must be a port number {MIN_PORT}..65535, not {value!r}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError("expires_in must be a number of seconds")
    return float(value)


def _revision(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"revision must be a non-negative integer, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class RelayPath:
    """One session's path through a relay: a port pair and the keys of its two ends."""

    path_id: str
    technician_port: int
    home_port: int
    technician_key: str
    router_key: str
    expires_in: float

    def __post_init__(self) -> None:
        if not self.path_id or len(self.path_id) > 64:
            raise PolicyError("path id must be 1-64 characters")
        _port(self.technician_port, "technician_port")
        _port(self.home_port, "home_port")
        if self.technician_port == self.home_port:
            raise PolicyError(f"path {self.path_id}: the two ports must differ")
        validate_public_key(self.technician_key)
        validate_public_key(self.router_key)
        if self.technician_key == self.router_key:
            raise PolicyError(f"path {self.path_id}: the two ends need different keys")
        if not 0 <= _seconds(self.expires_in) <= HARD_MAX_DURATION_S:
            raise PolicyError(f"path {self.path_id}: expires_in must be 0..{HARD_MAX_DURATION_S}s")

    @property
    def ports(self) -> tuple[int, int]:
        return (self.technician_port, self.home_port)

    def same_path(self, other: RelayPath) -> bool:
        """Equal apart from the remaining lifetime: the relay keeps its learned ends."""
        mine = (self.path_id, self.ports, self.technician_key, self.router_key)
        return mine == (other.path_id, other.ports, other.technician_key, other.router_key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path_id": self.path_id,
            "technician_port": self.technician_port,
            "home_port": self.home_port,
            "technician_key": self.technician_key,
            "router_key": self.router_key,
            "expires_in": self.expires_in,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RelayPath:
        if not isinstance(data, dict):
            raise PolicyError("a relay path must be a JSON object")
        return cls(
            path_id=str(data.get("path_id", "")),
            technician_port=_port(data.get("technician_port"), "technician_port"),
            home_port=_port(data.get("home_port"), "home_port"),
            technician_key=str(data.get("technician_key", "")),
            router_key=str(data.get("router_key", "")),
            expires_in=_seconds(data.get("expires_in")),
        )


@dataclass(frozen=True, slots=True)
class RelayState:
    """Every live path of one relay at one revision; a path absent here is closed."""

    relay_id: str
    revision: int
    paths: tuple[RelayPath, ...] = ()
    version: int = RELAY_PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.version != RELAY_PROTOCOL_VERSION:
            raise PolicyError(f"unsupported relay document version {self.version}")
        _revision(self.revision)
        ids: set[str] = set()
        ports: set[int] = set()
        for path in self.paths:
            if path.path_id in ids:
                raise PolicyError(f"path id {path.path_id} appears twice")
            ids.add(path.path_id)
            for port in path.ports:
                if port in ports:
                    raise PolicyError(f"port {port} is used by two paths")
                ports.add(port)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "relay_id": self.relay_id,
            "revision": self.revision,
            "paths": [path.to_dict() for path in self.paths],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> RelayState:
        if not isinstance(data, dict):
            raise PolicyError("relay document must be a JSON object")
        paths = data.get("paths", [])
        if not isinstance(paths, list):
            raise PolicyError("relay document needs a paths list")
        return cls(
            version=data.get("version", RELAY_PROTOCOL_VERSION),
            relay_id=str(data.get("relay_id", "")),
            revision=_revision(data.get("revision")),
            paths=tuple(RelayPath.from_dict(p) for p in paths),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RelayState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"relay document is not valid JSON: {exc}") from None
        return cls.from_dict(data)
