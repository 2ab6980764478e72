"""One relay path's decisions: where a datagram goes, or why it is dropped.

Pure: the time is passed in, nothing is sent here. The rules (threat model in
``docs/architecture.md``, "The relay"):

- An end's address is *pinned*. Transport data is forwarded only from a pinned address
  to the other end's pinned address; anything else from anywhere is dropped.
- The technician end is pinned only by a *confirmed* handshake: an initiation from the
  technician side whose ``mac1`` is keyed with the router's public key, answered from the
  pinned home with a response whose ``mac1`` is keyed with *this session's* technician
  key and whose receiver index is that initiation's sender index. A stranger cannot make
  the router answer; another session's technician (who knows the router's key) gets an
  answer MACed with its own key, which fails the check, so one session's path is
  unusable by another session's peers.
- The home end is pinned by the first initiation from the home side whose ``mac1`` is
  keyed with this session's technician key (only the router, the technician and the
  broker know it), and again whenever the technician end is not pinned yet. Once both
  ends are pinned, it moves, like the technician end, only by a confirmed handshake.
- Forwarded packets and valid handshakes are rate limited per path and direction; junk
  is dropped before it costs more than a header check (or one BLAKE2s for a fake
  initiation), and never touches the budget of the live path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from netpolicy.relay import RelayPath

from . import wire

Address = tuple[str, int]

CANDIDATE_TTL_S = 5.0  # WireGuard's REKEY_TIMEOUT: a response comes within it or never
MAX_CANDIDATES = 8
HANDSHAKES_PER_S = 5.0  # WireGuard starts at most one every 5 s; room for retries
HANDSHAKE_BURST = 10.0
BURST_S = 0.05  # bucket depth: 50 ms of the path's rate
# Per path and direction. 50,000 packets/s of 1,420 bytes is ~570 Mbit/s: room for a
# support session's bulk copy, while one path cannot take a whole relay.
DEFAULT_PACKETS_PER_S = 50_000
DEFAULT_BYTES_PER_S = 80_000_000


@dataclass(frozen=True, slots=True)
class Limits:
    """The rate every path gets, per direction (a relay-wide setting)."""

    packets_per_s: int = DEFAULT_PACKETS_PER_S
    bytes_per_s: int = DEFAULT_BYTES_PER_S


class Side(Enum):
    TECHNICIAN = "technician"
    HOME = "home"

    @property
    def other(self) -> Side:
        return Side.HOME if self is Side.TECHNICIAN else Side.TECHNICIAN


class Drop(Enum):
    """Why a datagram was not forwarded (a label of the relay's drop counter)."""

    MALFORMED = "malformed"
    UNKNOWN_SOURCE = "unknown_source"
    BAD_MAC = "bad_mac"
    NO_PEER = "no_peer"
    UNKNOWN_HANDSHAKE = "unknown_handshake"
    RATE = "rate"
    HANDSHAKE_RATE = "handshake_rate"
    EXPIRED = "expired"


class TokenBucket:
    """``rate`` per second with room for ``burst``; refills from the time it is given."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if level < amount:
            self.level = level
            return False
        self.level = level - amount
        return True


@dataclass(slots=True)
class Counters:
    packets: int = 0
    bytes: int = 0
    drops: dict[Drop, int] = field(default_factory=dict)

    def drop(self, reason: Drop) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


@dataclass(slots=True)
class _End:
    """What the relay knows about one end and the budget of packets *from* it."""

    side: Side
    mac1_key: bytes  # handshakes sent *from* this end are MACed with the other end's key
    packets: TokenBucket
    bytes: TokenBucket
    handshakes: TokenBucket
    pinned: Address | None = None
    candidates: dict[int, tuple[Address, float]] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)


class PathState:
    """The live state of one path; ``route`` is called for every datagram it receives."""

    def __init__(self, spec: RelayPath, now: float, limits: Limits = Limits()) -> None:
        self.spec = spec
        self.deadline = now + spec.expires_in
        self.generation = 0  # bumped whenever a pinned address changes
        self._ends = {
            Side.TECHNICIAN: self._end(Side.TECHNICIAN, limits, spec.router_key, now),
            Side.HOME: self._end(Side.HOME, limits, spec.technician_key, now),
        }

    @staticmethod
    def _end(side: Side, limits: Limits, receiver_key: str, now: float) -> _End:
        pps, bps = float(limits.packets_per_s), float(limits.bytes_per_s)
        return _End(
            side=side,
            mac1_key=wire.mac1_key(receiver_key),
            packets=TokenBucket(pps, max(pps * BURST_S, 64.0), now),
            bytes=TokenBucket(bps, max(bps * BURST_S, 65536.0), now),
            handshakes=TokenBucket(HANDSHAKES_PER_S, HANDSHAKE_BURST, now),
        )

    def renew(self, spec: RelayPath, now: float) -> None:
        """A new revision of the same path: only its lifetime moves (never extended by us)."""
        self.spec = spec
        self.deadline = now + spec.expires_in

    def pinned(self, side: Side) -> Address | None:
        return self._ends[side].pinned

    def counters(self, side: Side) -> Counters:
        """Packets and bytes forwarded *from* ``side``, and what from it was dropped."""
        return self._ends[side].counters

    def route(self, side: Side, src: Address, data: bytes, now: float) -> Address | None:
        """Where ``data`` (received from ``src`` on ``side``'s port) goes; None drops it."""
        end = self._ends[side]
        if now >= self.deadline:
            end.counters.drop(Drop.EXPIRED)
            return None
        message = wire.parse(data)
        if message is None:
            end.counters.drop(Drop.MALFORMED)
            return None
        if message.kind == wire.TRANSPORT:
            dst = self._from_pinned(end, src)
        elif message.kind == wire.INITIATION:
            dst = self._initiation(end, src, data, message.sender, now)
        elif message.kind == wire.RESPONSE:
            dst = self._response(end, src, data, message.receiver, now)
        else:
            dst = self._cookie_reply(end, src, message.receiver, now)
        if dst is None:
            return None
        if not (end.packets.take(1.0, now) and end.bytes.take(float(len(data)), now)):
            end.counters.drop(Drop.RATE)
            return None
        end.counters.packets += 1
        end.counters.bytes += len(data)
        return dst

    def _from_pinned(self, end: _End, src: Address) -> Address | None:
        if src != end.pinned:
            end.counters.drop(Drop.UNKNOWN_SOURCE)
            return None
        return self._peer_of(end)

    def _peer_of(self, end: _End) -> Address | None:
        peer = self._ends[end.side.other].pinned
        if peer is None:
            end.counters.drop(Drop.NO_PEER)
        return peer

    def _initiation(
        self, end: _End, src: Address, data: bytes, sender: int | None, now: float
    ) -> Address | None:
        if sender is None or not wire.mac1_valid(data, end.mac1_key):
            end.counters.drop(Drop.BAD_MAC)
            return None
        if not end.handshakes.take(1.0, now):
            end.counters.drop(Drop.HANDSHAKE_RATE)
            return None
        self._remember(end, sender, src, now)
        if end.side is Side.HOME and self._ends[Side.TECHNICIAN].pinned is None:
            self._pin(end, src)
        return self._peer_of(end)

    def _response(
        self, end: _End, src: Address, data: bytes, receiver: int | None, now: float
    ) -> Address | None:
        if src != end.pinned:
            end.counters.drop(Drop.UNKNOWN_SOURCE)
            return None
        if not wire.mac1_valid(data, end.mac1_key):
            end.counters.drop(Drop.BAD_MAC)
            return None
        initiator = self._ends[end.side.other]
        found = self._candidate(initiator, receiver, now)
        if found is None:
            end.counters.drop(Drop.UNKNOWN_HANDSHAKE)
            return None
        self._pin(initiator, found)
        return found

    def _cookie_reply(
        self, end: _End, src: Address, receiver: int | None, now: float
    ) -> Address | None:
        if src != end.pinned:
            end.counters.drop(Drop.UNKNOWN_SOURCE)
            return None
        found = self._candidate(self._ends[end.side.other], receiver, now)
        if found is None:
            end.counters.drop(Drop.UNKNOWN_HANDSHAKE)
        return found

    @staticmethod
    def _remember(end: _End, sender: int, src: Address, now: float) -> None:
        """Note who sent initiation ``sender``; the oldest goes when the table is full."""
        candidates = end.candidates
        for index in [i for i, (_, until) in candidates.items() if until <= now]:
            del candidates[index]
        if sender in candidates:  # a copy from elsewhere never displaces the first sender
            return
        if len(candidates) >= MAX_CANDIDATES:
            del candidates[next(iter(candidates))]
        candidates[sender] = (src, now + CANDIDATE_TTL_S)

    @staticmethod
    def _candidate(end: _End, index: int | None, now: float) -> Address | None:
        found = end.candidates.get(index) if index is not None else None
        if found is None or found[1] <= now:
            return None
        return found[0]

    def _pin(self, end: _End, src: Address) -> None:
        if end.pinned != src:
            end.pinned = src
            self.generation += 1
