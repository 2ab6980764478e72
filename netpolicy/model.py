"""The desired-state document: the only thing the broker sends the agent.

Versioned like Tailscale's ``tailcfg``: bump ``PROTOCOL_VERSION`` and log the change here
when the shape changes.

- 1 (2026-11): first version. Lifetimes travel as ``expires_in`` seconds measured on the
  broker's clock when the document was made, so agent clock skew cannot stretch them.
- 2 (2026-12-01): a session may carry ``relay_endpoint`` (``IP:PORT``, the home side of its
  relay path): the router's peer for it dials the relay with a persistent keepalive of
  ``RELAY_KEEPALIVE_S``, for homes behind NAT. Version-1 documents are still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from .errors import PolicyError
from .grants import Grant, merge_grants
from .validation import (
    HARD_MAX_DURATION_S,
    parse_address,
    parse_network,
    validate_device_ip,
    validate_lan,
    validate_public_key,
    validate_wireguard_key,
)

PROTOCOL_VERSION = 2
READABLE_VERSIONS = frozenset({1, PROTOCOL_VERSION})
# Below every common NAT's UDP mapping timeout (30 s and up), as WireGuard advises.
RELAY_KEEPALIVE_S = 25


def parse_endpoint(text: str) -> str:
    """``IPv4:PORT``, as a router's WireGuard peer endpoint needs it (no name to resolve)."""
    host, sep, port = text.rpartition(":")
    address = parse_address(host) if sep else None
    if not isinstance(address, IPv4Address) or not port.isdigit() or not 0 < int(port) < 65536:
        raise PolicyError(f"relay endpoint must be IPv4:PORT, not {text!r}")
    return f"{address}:{int(port)}"


@dataclass(frozen=True, slots=True)
class HomeNetwork:
    """Addresses of one home: its LAN, the router's LAN address, and the tunnel pool."""

    lan: IPv4Network
    router_ip: IPv4Address
    tunnel_pool: IPv4Network
    lan6: IPv6Network | None = None
    tunnel_pool6: IPv6Network | None = None

    def __post_init__(self) -> None:
        validate_lan(self.lan)
        if self.router_ip not in self.lan:
            raise PolicyError(f"router address {self.router_ip} is not inside the LAN {self.lan}")
        if self.tunnel_pool.overlaps(self.lan):
            raise PolicyError(f"tunnel pool {self.tunnel_pool} overlaps the LAN {self.lan}")
        if self.tunnel_pool.num_addresses < 4:
            raise PolicyError(f"tunnel pool {self.tunnel_pool} is too small")
        if self.lan6 is not None:
            validate_lan(self.lan6)
        if (
            self.lan6 is not None
            and self.tunnel_pool6 is not None
            and self.tunnel_pool6.overlaps(self.lan6)
        ):
            raise PolicyError(f"tunnel pool {self.tunnel_pool6} overlaps the LAN {self.lan6}")

    def validate_grant(self, grant: Grant) -> Grant:
        if grant.device_ip.version == 6:
            if self.lan6 is None:
                raise PolicyError(f"device {grant.device_ip} is IPv6 but the home has no IPv6 LAN")
            validate_device_ip(grant.device_ip, self.lan6, None)
        else:
            validate_device_ip(grant.device_ip, self.lan, self.router_ip)
        return grant

    def to_dict(self) -> dict[str, Any]:
        return {
            "lan": str(self.lan),
            "router_ip": str(self.router_ip),
            "tunnel_pool": str(self.tunnel_pool),
            "lan6": str(self.lan6) if self.lan6 else None,
            "tunnel_pool6": str(self.tunnel_pool6) if self.tunnel_pool6 else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HomeNetwork:
        lan = parse_network(str(data.get("lan", "")))
        pool = parse_network(str(data.get("tunnel_pool", "")))
        router = parse_address(str(data.get("router_ip", "")))
        lan6 = parse_network(data["lan6"]) if data.get("lan6") else None
        pool6 = parse_network(data["tunnel_pool6"]) if data.get("tunnel_pool6") else None
        if not isinstance(lan, IPv4Network) or not isinstance(pool, IPv4Network):
            raise PolicyError("lan and tunnel_pool must be IPv4 networks")
        if not isinstance(router, IPv4Address):
            raise PolicyError("router_ip must be an IPv4 address")
        if lan6 is not None and not isinstance(lan6, IPv6Network):
            raise PolicyError("lan6 must be an IPv6 network")
        if pool6 is not None and not isinstance(pool6, IPv6Network):
            raise PolicyError("tunnel_pool6 must be an IPv6 network")
        return cls(lan=lan, router_ip=router, tunnel_pool=pool, lan6=lan6, tunnel_pool6=pool6)


@dataclass(frozen=True, slots=True)
class LiveSession:
    """One approved session as the router sees it: a peer and the grants behind it."""

    session_id: str
    public_key: str
    tunnel_ip: IPv4Address
    grants: tuple[Grant, ...]
    expires_in: float
    preshared_key: str | None = field(default=None, repr=False)
    tunnel_ip6: IPv6Address | None = None
    relay_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.relay_endpoint is not None:
            parse_endpoint(self.relay_endpoint)
        if not self.session_id or len(self.session_id) > 64:
            raise PolicyError("session id must be 1-64 characters")
        validate_public_key(self.public_key)
        if self.preshared_key is not None:
            validate_wireguard_key(self.preshared_key)
        if not self.grants:
            raise PolicyError(f"session {self.session_id} has no grants")
        if not 0 <= self.expires_in <= HARD_MAX_DURATION_S:
            raise PolicyError(
                f"session {self.session_id}: expires_in must be 0..{HARD_MAX_DURATION_S}s"
            )
        for grant in self.grants:
            if grant.device_ip.version == 6 and self.tunnel_ip6 is None:
                raise PolicyError(
                    f"session {self.session_id}: IPv6 grant {grant} needs an IPv6 tunnel address"
                )
        object.__setattr__(self, "grants", merge_grants(self.grants))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "session_id": self.session_id,
            "public_key": self.public_key,
            "preshared_key": self.preshared_key,
            "tunnel_ip": str(self.tunnel_ip),
            "tunnel_ip6": str(self.tunnel_ip6) if self.tunnel_ip6 else None,
            "grants": [grant.to_dict() for grant in self.grants],
            "expires_in": self.expires_in,
        }
        if self.relay_endpoint is not None:
            data["relay_endpoint"] = self.relay_endpoint
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveSession:
        tunnel_ip = parse_address(str(data.get("tunnel_ip", "")))
        tunnel_ip6 = parse_address(data["tunnel_ip6"]) if data.get("tunnel_ip6") else None
        if not isinstance(tunnel_ip, IPv4Address):
            raise PolicyError("tunnel_ip must be an IPv4 address")
        if tunnel_ip6 is not None and not isinstance(tunnel_ip6, IPv6Address):
            raise PolicyError("tunnel_ip6 must be an IPv6 address")
        grants = data.get("grants")
        if not isinstance(grants, list):
            raise PolicyError("session grants must be a list")
        expires_in = data.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise PolicyError("expires_in must be a number of seconds")
        return cls(
            session_id=str(data.get("session_id", "")),
            public_key=str(data.get("public_key", "")),
            preshared_key=data.get("preshared_key") or None,
            tunnel_ip=tunnel_ip,
            tunnel_ip6=tunnel_ip6,
            grants=tuple(Grant.from_dict(g) for g in grants),
            expires_in=float(expires_in),
            relay_endpoint=parse_endpoint(str(relay))
            if (relay := data.get("relay_endpoint"))
            else None,
        )


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Every live session of one home at one revision."""

    home_id: str
    revision: int
    network: HomeNetwork
    sessions: tuple[LiveSession, ...] = ()
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.version not in READABLE_VERSIONS:
            raise PolicyError(f"unsupported desired-state version {self.version}")
        if self.revision < 0:
            raise PolicyError("revision must not be negative")
        ids: set[object] = set()
        keys: set[object] = set()
        tunnels: set[object] = set()
        valid_devices: set[IPv4Address | IPv6Address] = set()
        for session in self.sessions:
            for taken, what, value in (
                (ids, "session id", session.session_id),
                (keys, "public key", session.public_key),
                (tunnels, "tunnel address", session.tunnel_ip),
            ):
                if value in taken:
                    raise PolicyError(f"{what} {value} appears in two sessions")
                taken.add(value)
            self._validate_session_addresses(session, valid_devices)

    def _validate_session_addresses(
        self, session: LiveSession, valid_devices: set[IPv4Address | IPv6Address]
    ) -> None:
        """``valid_devices``: device addresses already checked in this document; sessions
        share devices, and the check depends on the address and the network only."""
        pool = self.network.tunnel_pool
        tip = session.tunnel_ip
        if tip not in pool or tip in (pool.network_address, pool.broadcast_address):
            raise PolicyError(f"tunnel address {tip} is not a host of the tunnel pool {pool}")
        if session.tunnel_ip6 is not None:
            pool6 = self.network.tunnel_pool6
            if pool6 is None or session.tunnel_ip6 not in pool6:
                raise PolicyError(f"tunnel address {session.tunnel_ip6} is not in the IPv6 pool")
        for grant in session.grants:
            if grant.device_ip not in valid_devices:
                self.network.validate_grant(grant)
                valid_devices.add(grant.device_ip)

    def session(self, session_id: str) -> LiveSession | None:
        return next((s for s in self.sessions if s.session_id == session_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "home_id": self.home_id,
            "revision": self.revision,
            "network": self.network.to_dict(),
            "sessions": [session.to_dict() for session in self.sessions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> DesiredState:
        if not isinstance(data, dict):
            raise PolicyError("desired state must be a JSON object")
        sessions = data.get("sessions", [])
        network = data.get("network")
        if not isinstance(sessions, list) or not isinstance(network, dict):
            raise PolicyError("desired state needs a network object and a sessions list")
        revision = data.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise PolicyError("revision must be an integer")
        return cls(
            version=int(data.get("version", PROTOCOL_VERSION)),
            home_id=str(data.get("home_id", "")),
            revision=revision,
            network=HomeNetwork.from_dict(network),
            sessions=tuple(LiveSession.from_dict(s) for s in sessions),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DesiredState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"desired state is not valid JSON: {exc}") from None
        return cls.from_dict(data)
