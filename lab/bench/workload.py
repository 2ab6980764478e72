"""Synthetic homes with N live one-grant sessions, built through the real netpolicy model.

Filler sessions get distinct tunnel addresses and point at devices nobody probes; the
probe sessions use addresses near the top of the pool that the rig's client owns, and can
be placed at any position of the session list (the baseline chain keeps that order).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

from netpolicy import nft
from netpolicy.grants import Grant, PortRange
from netpolicy.model import DesiredState, HomeNetwork, LiveSession
from netpolicy.nft import ElementKey

TUNNEL_POOL = IPv4Network("10.96.0.0/16")
ROUTER_TUNNEL_IP = IPv4Address("10.96.0.1")
LAN = IPv4Network("192.168.0.0/16")
ROUTER_LAN_IP = IPv4Address("192.168.0.1")
PROBE_DEVICE_IP = IPv4Address("192.168.250.10")
NETWORK = HomeNetwork(lan=LAN, router_ip=ROUTER_LAN_IP, tunnel_pool=TUNNEL_POOL)
FILLER_PORTS = (443, 80, 8443, 554, 1883, 8123)
MAX_FILLERS = 60_000
LIFETIME_S = 3600.0


def _public_key(n: int) -> str:
    """A distinct key per ``n``: 32 hash bytes, never one of the low-order points that
    netpolicy refuses (small integers such as 0 and 1 are)."""
    return base64.b64encode(hashlib.sha256(n.to_bytes(8, "big")).digest()).decode()


def probe_tunnel_ip(k: int) -> IPv4Address:
    """Tunnel address of probe session ``k`` (the rig's client owns these)."""
    return TUNNEL_POOL.broadcast_address - 1 - k


def session(session_id: str, key_n: int, tunnel_ip: IPv4Address, grant: Grant) -> LiveSession:
    return LiveSession(session_id, _public_key(key_n), tunnel_ip, (grant,), LIFETIME_S)


def filler(i: int) -> LiveSession:
    """Session ``i`` of the background load: its own tunnel /32 and one device port."""
    if not 0 <= i < MAX_FILLERS:
        raise ValueError(f"filler index must be 0..{MAX_FILLERS - 1}")
    device = LAN.network_address + 256 + (i % 50_000) + 2
    port = PortRange.single(FILLER_PORTS[i % len(FILLER_PORTS)])
    return session(f"f{i}", i + 1, ROUTER_TUNNEL_IP + 1 + i, Grant(device, "tcp", port))


def probe(k: int, port: int, proto: str = "tcp") -> LiveSession:
    """Probe session ``k``: the rig's client at ``probe_tunnel_ip(k)`` to the probe device."""
    grant = Grant(PROBE_DEVICE_IP, "udp" if proto == "udp" else "tcp", PortRange.single(port))
    return session(f"p{k}", MAX_FILLERS + 1 + k, probe_tunnel_ip(k), grant)


def home(fillers: int, probes: Mapping[int, LiveSession] | None = None) -> DesiredState:
    """``fillers`` sessions with each probe session inserted at its index (clamped)."""
    sessions = [filler(i) for i in range(fillers)]
    for position, live in sorted((probes or {}).items()):
        sessions.insert(min(position, len(sessions)), live)
    return DesiredState("bench", 1, NETWORK, tuple(sessions))


def elements(state: DesiredState) -> dict[ElementKey, int]:
    """ztb's set elements for ``state`` in session order, every session with its lifetime."""
    remaining = {s.session_id: s.expires_in for s in state.sessions}
    return nft.desired_elements(state, remaining)
