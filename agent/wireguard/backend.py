"""The WireGuard interface the agent needs, whatever implements it.

Kernel WireGuard (netlink) and wireguard-go (UAPI socket) differ only in how they are
reached, so reconcile talks to this small protocol; ``select`` picks one at run time.
A backend is bound to one interface, the only one the agent owns.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

WireGuardChoice = Literal["auto", "kernel", "userspace"]
KEY_BYTES = 32
ZERO_KEY_HEX = "00" * KEY_BYTES


class WireGuardError(RuntimeError):
    """The WireGuard device refused a change or cannot be reached."""


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """The agent's interface as ``ensure_interface`` makes it: key, port, addresses, routes."""

    private_key: str = field(repr=False)
    listen_port: int
    addresses: tuple[str, ...]
    routes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One peer as ``set_peer`` writes it: the fields the agent chooses, nothing observed."""

    public_key: str
    allowed_ips: tuple[str, ...]
    preshared_key: str | None = field(default=None, repr=False)
    endpoint: str | None = None  # ``IP:PORT``; set only when given (a relayed session)
    keepalive_s: int = 0  # persistent keepalive; 0 = off, always written


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as the device reports it. Observed fields do not take part in equality."""

    public_key: str
    allowed_ips: tuple[str, ...]
    preshared_key: str | None = field(default=None, repr=False)
    keepalive_s: int = 0  # persistent keepalive; 0 = off (a relayed session's peer has one)
    # Where the peer is dialled. Desired only for relayed sessions; WireGuard also learns
    # it from the peer (roaming), so it is compared apart: see ``needs_update``.
    endpoint: str | None = field(default=None, compare=False)
    last_handshake: float = field(default=0.0, compare=False)
    rx_bytes: int = field(default=0, compare=False)
    tx_bytes: int = field(default=0, compare=False)

    def config(self) -> PeerConfig:
        """What ``set_peer`` needs to make the device hold this peer."""
        return PeerConfig(
            self.public_key, self.allowed_ips, self.preshared_key, self.endpoint, self.keepalive_s
        )


class WireGuardBackend(Protocol):
    kind: str
    name: str

    def ensure_interface(self, config: InterfaceConfig) -> None:
        """Create or reuse the interface and make key, port, addresses and routes match."""

    def list_peers(self) -> list[PeerState]:
        """Every peer on the interface; empty when the interface does not exist."""

    def set_peer(self, peer: PeerConfig) -> None:
        """Add or update one peer, replacing its allowed-ips; other peers stay untouched.
        ``peer.endpoint`` is set only when given; ``peer.keepalive_s`` always."""

    def remove_peer(self, public_key: str) -> None:
        """Remove one peer; other peers stay untouched."""

    def delete_interface(self) -> bool:
        """Remove the interface (and the process behind it); False when it was not there."""


def needs_update(have: PeerState | None, want: PeerState) -> bool:
    """The kernel's peer differs from the wanted one. An endpoint counts only when one is
    wanted (a relay path): then a peer that roamed elsewhere is pointed back."""
    if have is None or have != want:
        return True
    return want.endpoint is not None and have.endpoint != want.endpoint


def key_to_hex(key: str) -> str:
    """Base64 WireGuard key (the wg tool's form) to the hex form UAPI speaks."""
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        raise WireGuardError("WireGuard key is not base64") from None
    if len(raw) != KEY_BYTES:
        raise WireGuardError("WireGuard key must be 32 bytes")
    return raw.hex()


def key_from_hex(text: str) -> str | None:
    """Hex key from UAPI to base64; the all-zero key means "none"."""
    if text == ZERO_KEY_HEX:
        return None
    return base64.b64encode(bytes.fromhex(text)).decode()


def canonical_ips(allowed_ips: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(allowed_ips)))
