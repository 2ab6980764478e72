"""Make the kernel match a desired-state document: nft set elements, then WireGuard peers.

``Agent.apply`` is idempotent and incremental: it reads what the kernel holds, writes only
the difference (one nft transaction), and may be called again with the same document at
any time. Order matters only for safety: elements are added before peers, so after a
crash a peer without elements can only mean its elements expired or were deleted, and the
restart treats that session as over. On removal the nft transaction (deleting elements)
also runs before peers are removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netpolicy import DesiredState, HomeNetwork, LiveSession
from netpolicy.nft import (
    ElementKey,
    KernelElement,
    desired_elements,
    diff_commands,
    diff_elements,
    parse_set_listing,
    table_commands,
    timeout_seconds,
)

from .events import log_event
from .lifetimes import SessionLifetimes, remaining_at
from .nft_backend import Listing, NftBackend, NftError
from .wg_backend import PeerState, WireGuardBackend, WireGuardError, canonical_ips

Clock = Callable[[], float]
# An element can expire between listing and deleting it, failing the whole (atomic)
# transaction; one retry on a fresh listing settles that race.
_NFT_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    name: str
    private_key: str = field(repr=False)
    listen_port: int


@dataclass(frozen=True, slots=True)
class ApplyResult:
    revision: int
    elements_added: int = 0
    elements_deleted: int = 0
    peers_set: int = 0
    peers_removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(
            self.elements_added or self.elements_deleted or self.peers_set or self.peers_removed
        )


def interface_addresses(network: HomeNetwork) -> tuple[list[str], list[str]]:
    """The router's tunnel address (first host of each pool) and the pools as routes."""
    addresses = [f"{next(network.tunnel_pool.hosts())}/32"]
    routes = [str(network.tunnel_pool)]
    if network.tunnel_pool6 is not None:
        addresses.append(f"{next(network.tunnel_pool6.hosts())}/128")
        routes.append(str(network.tunnel_pool6))
    return addresses, routes


def session_peer(session: LiveSession) -> PeerState:
    """The peer a session needs: its key, its PSK and its tunnel address(es) only."""
    ips = [f"{session.tunnel_ip}/32"]
    if session.tunnel_ip6 is not None:
        ips.append(f"{session.tunnel_ip6}/128")
    return PeerState(session.public_key, canonical_ips(ips), session.preshared_key)


def _session_tunnels(session: LiveSession) -> set[str]:
    return {str(ip) for ip in (session.tunnel_ip, session.tunnel_ip6) if ip is not None}


def kernel_lifetimes(
    desired: DesiredState,
    elements: Mapping[ElementKey, KernelElement],
    peers: Mapping[str, PeerState],
) -> dict[str, float]:
    """What the kernel says is left of each session, for the restart rule.

    A session with elements has the shortest of their ``expires``; one with a peer but no
    elements is over (elements go in before peers), so it gets zero.
    """
    left: dict[str, float] = {}
    for session in desired.sessions:
        tunnels = _session_tunnels(session)
        expires = [el.expires for key, el in elements.items() if key.tunnel_ip in tunnels]
        if expires:
            left[session.session_id] = float(min(expires))
        elif session.public_key in peers:
            left[session.session_id] = 0.0
    return left


def _has_table(listing: Listing) -> bool:
    return any(isinstance(item, dict) and "table" in item for item in listing.get("nftables", []))


class Agent:
    """The data plane of one home router: one interface, one ``table inet ztb``."""

    def __init__(
        self,
        wireguard: WireGuardBackend,
        nft: NftBackend,
        interface: InterfaceSpec,
        clock: Clock = time.monotonic,
    ) -> None:
        self.wireguard = wireguard
        self.nft = nft
        self.interface = interface
        self._clock = clock
        self._lifetimes = SessionLifetimes()
        self._network: HomeNetwork | None = None
        self._skeleton_ready = False
        self._desired: DesiredState | None = None
        self._received_at = 0.0
        self._live: set[str] = set()

    @property
    def desired(self) -> DesiredState | None:
        return self._desired

    def remaining(self) -> dict[str, float]:
        return remaining_at(self._lifetimes.deadlines, self._clock())

    def apply(self, desired: DesiredState, received_at: float | None = None) -> ApplyResult:
        """Converge the kernel to ``desired``; ``received_at`` anchors new deadlines."""
        try:
            return self._apply(desired, received_at)
        except WireGuardError:
            self._network = None  # re-assert the interface next time (daemon may be gone)
            raise

    def _apply(self, desired: DesiredState, received_at: float | None) -> ApplyResult:
        now = self._clock()
        received = now if received_at is None else received_at
        if self._network != desired.network:
            addresses, routes = interface_addresses(desired.network)
            self.wireguard.ensure_interface(
                self.interface.private_key, self.interface.listen_port, addresses, routes
            )
            self._network = desired.network
        peers = {peer.public_key: peer for peer in self.wireguard.list_peers()}
        added, deleted, deadlines = self._apply_elements(desired, received, now, peers)
        self._lifetimes.commit(desired.revision, deadlines)
        self._desired, self._received_at = desired, received
        remaining = remaining_at(deadlines, now)
        live = [s for s in desired.sessions if timeout_seconds(remaining[s.session_id]) >= 1]
        self._live = {s.session_id for s in live}
        peers_set, peers_removed = self._apply_peers(live, peers)
        return ApplyResult(desired.revision, added, deleted, peers_set, peers_removed)

    def _apply_elements(
        self,
        desired: DesiredState,
        received: float,
        now: float,
        peers: Mapping[str, PeerState],
    ) -> tuple[int, int, dict[str, float]]:
        """One nft transaction: the skeleton when missing, then deletes, then adds."""
        for attempt in range(1, _NFT_ATTEMPTS + 1):
            listing = self.nft.list_table()
            current = parse_set_listing(listing)
            kernel_left = kernel_lifetimes(desired, current, peers)
            deadlines = self._lifetimes.plan(desired, received, now, kernel_left)
            wanted = desired_elements(desired, remaining_at(deadlines, now))
            diff = diff_elements(current, wanted)
            commands = []
            if not self._skeleton_ready or not _has_table(listing):
                commands += table_commands(self.interface.name)
            commands += diff_commands(diff)
            try:
                self.nft.run(commands)
            except NftError as exc:
                if attempt == _NFT_ATTEMPTS:
                    raise
                log_event("nft_retry", revision=desired.revision, error=str(exc))
                continue
            self._skeleton_ready = True
            return len(diff.add), len(diff.delete), deadlines
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply_peers(
        self, live: list[LiveSession], peers: Mapping[str, PeerState]
    ) -> tuple[int, int]:
        wanted = {s.public_key: session_peer(s) for s in live}
        stale = sorted(set(peers) - set(wanted))
        for public_key in stale:
            self.wireguard.remove_peer(public_key)
        changed = [peer for key, peer in sorted(wanted.items()) if peers.get(key) != peer]
        for peer in changed:
            self.wireguard.set_peer(peer.public_key, peer.preshared_key, peer.allowed_ips)
        return len(changed), len(stale)

    def next_expiry(self) -> float | None:
        """When the next live session drops under one second left (its end, rounded down)."""
        due = [self._lifetimes.deadlines[sid] - 1.0 for sid in self._live]
        return min(due, default=None)

    def reapply(self) -> ApplyResult | None:
        """Apply the last document again: ends sessions whose time ran out, fixes drift."""
        if self._desired is None:
            return None
        return self.apply(self._desired, self._received_at)

    def report(self) -> dict[str, Any]:
        """Per-session lifetimes and the kernel's per-element and per-peer counters."""
        desired = self._desired
        sessions = desired.sessions if desired else ()
        by_tunnel = {ip: s.session_id for s in sessions for ip in _session_tunnels(s)}
        by_key = {s.public_key: s.session_id for s in sessions}
        peers = self.wireguard.list_peers()
        elements = parse_set_listing(self.nft.list_table())
        remaining = self.remaining()
        return {
            "revision": desired.revision if desired else None,
            "sessions": {
                s.session_id: {
                    "remaining": round(remaining.get(s.session_id, 0.0), 3),
                    "peer": any(p.public_key == s.public_key for p in peers),
                }
                for s in sessions
            },
            "elements": [
                {
                    "session_id": by_tunnel.get(key.tunnel_ip),
                    "tunnel_ip": key.tunnel_ip,
                    "device_ip": key.device_ip,
                    "proto": key.proto,
                    "ports": str(key.first) if key.first == key.last else f"{key.first}-{key.last}",
                    "expires": el.expires,
                    "packets": el.packets,
                    "bytes": el.bytes,
                }
                for key, el in sorted(elements.items())
            ],
            "peers": [
                {
                    "public_key": p.public_key,
                    "session_id": by_key.get(p.public_key),
                    "allowed_ips": list(p.allowed_ips),
                    "last_handshake": p.last_handshake,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                }
                for p in sorted(peers, key=lambda p: p.public_key)
            ],
        }
