"""What the agent says about the kernel: the status file and the broker's report.

The reconciler hands over what it knows (its model, or a fresh read of the kernel); this
module names each element and peer after the session that owns it. The status file keeps
everything, orphans included (an operator wants to see them); the broker's report carries
only what a session owns, as ``netpolicy.AgentReport``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netpolicy import (
    AgentReport,
    DesiredState,
    ElementCounters,
    LiveSession,
    PeerReport,
    PortRange,
)
from netpolicy.grants import parse_ip
from netpolicy.nft import ElementKey, KernelElement
from netpolicy.report import MAX_ELEMENTS, MAX_PEERS

from .wireguard.backend import PeerState


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of the kernel: the status file's view and the broker's report of it.

    ``report`` is None before the first document (there is no revision to report).
    """

    status: dict[str, Any]
    report: AgentReport | None


def session_tunnels(session: LiveSession) -> set[str]:
    return {str(ip) for ip in (session.tunnel_ip, session.tunnel_ip6) if ip is not None}


def by_tunnel(*documents: DesiredState | None) -> dict[str, str]:
    """Tunnel address -> session id; a later document's sessions win."""
    return {
        ip: s.session_id for d in documents if d for s in d.sessions for ip in session_tunnels(s)
    }


def element_counters(
    session_id: str, key: ElementKey, element: KernelElement, final: bool = False
) -> ElementCounters:
    """One element's kernel counters as the report carries them."""
    ports = PortRange(key.first, key.last)
    return ElementCounters(
        session_id, parse_ip(key.device_ip), key.proto, ports, element.packets, element.bytes, final
    )


def bounded_report(
    revision: int, peers: Sequence[PeerReport] = (), elements: Sequence[ElementCounters] = ()
) -> AgentReport:
    """A report of at most what the broker accepts; the first rows win (finals go first).

    A home never comes near the bounds in practice; if one did, a report the broker
    refuses would block every later one, so the rest waits for the next reading.
    """
    return AgentReport(revision, tuple(peers[:MAX_PEERS]), tuple(elements[:MAX_ELEMENTS]))


def _ports(key: ElementKey) -> str:
    return str(key.first) if key.first == key.last else f"{key.first}-{key.last}"


def describe(
    desired: DesiredState | None,
    remaining: Mapping[str, float],
    elements: Mapping[ElementKey, KernelElement],
    peers: Iterable[PeerState],
    counters: bool,
) -> dict[str, Any]:
    """The status file: per-session lifetimes, every element and peer (counters if read)."""
    tunnels = by_tunnel(desired)
    keys = {s.public_key: s.session_id for s in (desired.sessions if desired else ())}
    peers = sorted(peers, key=lambda p: p.public_key)
    peer_keys = {p.public_key for p in peers}
    element_rows = []
    for key, el in sorted(elements.items()):
        row: dict[str, Any] = {
            "session_id": tunnels.get(key.tunnel_ip),
            "tunnel_ip": key.tunnel_ip,
            "device_ip": key.device_ip,
            "proto": key.proto,
            "ports": _ports(key),
            "expires": el.expires,
        }
        if counters:
            row.update(packets=el.packets, bytes=el.bytes)
        element_rows.append(row)
    peer_rows = []
    for p in peers:
        peer_row: dict[str, Any] = {
            "public_key": p.public_key,
            "session_id": keys.get(p.public_key),
            "allowed_ips": list(p.allowed_ips),
        }
        if counters:
            peer_row.update(
                last_handshake=p.last_handshake, rx_bytes=p.rx_bytes, tx_bytes=p.tx_bytes
            )
        peer_rows.append(peer_row)
    return {
        "revision": desired.revision if desired else None,
        "sessions": {
            s.session_id: {
                "remaining": round(remaining.get(s.session_id, 0.0), 3),
                "peer": s.public_key in peer_keys,
            }
            for s in (desired.sessions if desired else ())
        },
        "elements": element_rows,
        "peers": peer_rows,
        "counters": counters,
    }


def counters_report(
    desired: DesiredState,
    elements: Mapping[ElementKey, KernelElement],
    peers: Iterable[PeerState],
) -> AgentReport:
    """The broker's report of one kernel read: what the sessions of ``desired`` own."""
    tunnels = by_tunnel(desired)
    keys = {s.public_key for s in desired.sessions}
    owned = [
        element_counters(tunnels[key.tunnel_ip], key, element)
        for key, element in sorted(elements.items())
        if key.tunnel_ip in tunnels
    ]
    peer_reports = [
        PeerReport(p.public_key, p.last_handshake or None, p.rx_bytes, p.tx_bytes)
        for p in sorted(peers, key=lambda p: p.public_key)
        if p.public_key in keys
    ]
    return bounded_report(desired.revision, peer_reports, owned)
