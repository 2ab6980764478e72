"""Make the kernel match a desired-state document: nft set elements, then WireGuard peers.

``Reconciler.apply`` is idempotent and incremental, and its cost follows the change, not the
number of live grants. The agent keeps a model of what the kernel holds (each element
with its expiry on the monotonic clock, each peer) and lists the kernel only when that
model is unknown: at start, on ``relist`` (the periodic resync, which also undoes changes
made behind its back) and after a failed write. Between listings only the sessions whose
keys, grants, lifetime or liveness changed are compiled and compared; the rest cost a
dict lookup each. Elements whose kernel timeout has passed drop out of the model.

Order matters only for safety: elements are added before peers, so after a crash a peer
without elements can only mean its elements expired or were deleted, and the restart
treats that session as over. On removal the nft transaction (deleting elements) also runs
before peers are removed.

Deleting an element deletes its counters, so the elements of a leaving session are read
just before they go (``counters.py``); what the agent says about the kernel is built in
``status.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netpolicy import DesiredState, ElementCounters, HomeNetwork, LiveSession
from netpolicy.model import RELAY_KEEPALIVE_S
from netpolicy.nft import (
    LIFETIME_SLACK_S,
    ElementDiff,
    ElementKey,
    KernelElement,
    desired_elements,
    diff_commands,
    diff_elements,
    parse_set_listing,
    table_commands,
    timeout_seconds,
)

from .counters import FinalCounters
from .events import log_event
from .lifetimes import SessionLifetimes, remaining_at
from .nftables.backend import Listing, NftBackend, NftError
from .status import Reading, by_tunnel, counters_report, describe, session_tunnels
from .wireguard.backend import (
    InterfaceConfig,
    PeerState,
    WireGuardBackend,
    WireGuardError,
    canonical_ips,
    needs_update,
)

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


@dataclass(frozen=True, slots=True)
class _Written:
    """One session as the kernel holds it after the last successful apply."""

    session: LiveSession
    keys: frozenset[ElementKey]
    expires_at: float  # when its elements expire in the kernel (monotonic clock)
    live: bool


@dataclass(slots=True)
class _KernelModel:
    """What the kernel holds, kept in step with every successful write."""

    elements: dict[ElementKey, float]  # key -> kernel expiry on the monotonic clock
    peers: dict[str, PeerState]
    has_table: bool
    written: dict[str, _Written] = field(default_factory=dict)  # by session id
    reconciled: bool = False  # False right after a listing: the next plan covers everything


@dataclass(frozen=True, slots=True)
class _Plan:
    """The sessions looked at this time and what the kernel must change for them."""

    full: bool
    scope: tuple[LiveSession, ...]
    before: tuple[_Written, ...]  # how the scoped and the gone sessions were written
    gone: tuple[str, ...]  # ids of sessions written before and absent from the document
    wanted: dict[ElementKey, int]
    diff: ElementDiff


def interface_addresses(network: HomeNetwork) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The router's tunnel address (first host of each pool) and the pools as routes."""
    addresses = [f"{next(network.tunnel_pool.hosts())}/32"]
    routes = [str(network.tunnel_pool)]
    if network.tunnel_pool6 is not None:
        addresses.append(f"{next(network.tunnel_pool6.hosts())}/128")
        routes.append(str(network.tunnel_pool6))
    return tuple(addresses), tuple(routes)


def session_peer(session: LiveSession) -> PeerState:
    """The peer a session needs: its key, its PSK and its tunnel address(es) only."""
    ips = [f"{session.tunnel_ip}/32"]
    if session.tunnel_ip6 is not None:
        ips.append(f"{session.tunnel_ip6}/128")
    if session.relay_endpoint is None:
        return PeerState(session.public_key, canonical_ips(ips), session.preshared_key)
    return PeerState(
        session.public_key,
        canonical_ips(ips),
        session.preshared_key,
        RELAY_KEEPALIVE_S,
        session.relay_endpoint,
    )


def _same_shape(a: LiveSession, b: LiveSession) -> bool:
    """Equal but for ``expires_in``: the same peer and the same elements."""
    return (
        a.public_key == b.public_key
        and a.preshared_key == b.preshared_key
        and a.tunnel_ip == b.tunnel_ip
        and a.tunnel_ip6 == b.tunnel_ip6
        and a.grants == b.grants
    )


def kernel_lifetimes(
    desired: DesiredState,
    elements: Mapping[ElementKey, KernelElement],
    peers: Mapping[str, PeerState],
) -> dict[str, float]:
    """What the kernel says is left of each session, for the restart rule.

    A session with elements has the shortest of their ``expires``; one with a peer but no
    elements is over (elements go in before peers), so it gets zero.
    """
    shortest: dict[str, int] = {}
    for key, element in elements.items():
        have = shortest.get(key.tunnel_ip)
        shortest[key.tunnel_ip] = element.expires if have is None else min(have, element.expires)
    left: dict[str, float] = {}
    for session in desired.sessions:
        expires = [shortest[ip] for ip in session_tunnels(session) if ip in shortest]
        if expires:
            left[session.session_id] = float(min(expires))
        elif session.public_key in peers:
            left[session.session_id] = 0.0
    return left


def _has_table(listing: Listing) -> bool:
    return any(isinstance(item, dict) and "table" in item for item in listing.get("nftables", []))


class Reconciler:
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
        self._kernel: _KernelModel | None = None
        self._skeleton_ready = False  # chains are rebuilt once per process, and if missing
        self._desired: DesiredState | None = None
        self._received_at = 0.0
        self._next_expiry: float | None = None
        self._finals = FinalCounters(nft)

    @property
    def desired(self) -> DesiredState | None:
        return self._desired

    def remaining(self) -> dict[str, float]:
        return remaining_at(self._lifetimes.deadlines, self._clock())

    def apply(
        self, desired: DesiredState, received_at: float | None = None, relist: bool = False
    ) -> ApplyResult:
        """Converge the kernel to ``desired``; ``received_at`` anchors new deadlines.

        ``relist`` reads the kernel first instead of trusting the model (periodic resync).
        """
        if relist:
            self._kernel = None
        try:
            return self._apply(desired, received_at)
        except WireGuardError:
            # Re-assert the interface and re-read the peers next time (the daemon may be gone).
            self._network, self._kernel = None, None
            raise

    def _apply(self, desired: DesiredState, received_at: float | None) -> ApplyResult:
        now = self._clock()
        received = now if received_at is None else received_at
        if self._network != desired.network:
            addresses, routes = interface_addresses(desired.network)
            spec = self.interface
            self.wireguard.ensure_interface(
                InterfaceConfig(spec.private_key, spec.listen_port, addresses, routes)
            )
            self._network = desired.network
        kernel, plan, deadlines = self._write_elements(desired, received, now)
        self._lifetimes.commit(desired.revision, deadlines)
        self._desired, self._received_at = desired, received
        self._plan_timers(kernel, deadlines)
        peers_set, peers_removed = self._write_peers(kernel, plan)
        return ApplyResult(
            desired.revision, len(plan.diff.add), len(plan.diff.delete), peers_set, peers_removed
        )

    def _read_kernel(self) -> _KernelModel:
        """List the table and the peers: the only O(live grants) kernel read of apply."""
        now = self._clock()
        listing = self.nft.list_table()
        elements = {
            key: now + element.expires for key, element in parse_set_listing(listing).items()
        }
        peers = {peer.public_key: peer for peer in self.wireguard.list_peers()}
        return _KernelModel(elements, peers, _has_table(listing))

    def _write_elements(
        self, desired: DesiredState, received: float, now: float
    ) -> tuple[_KernelModel, _Plan, dict[str, float]]:
        """One nft transaction: the skeleton when missing, then deletes, then adds."""
        for attempt in range(1, _NFT_ATTEMPTS + 1):
            if self._kernel is None:
                self._kernel = self._read_kernel()
            kernel = self._kernel
            kernel_left: Mapping[str, float] = {}
            if self._lifetimes.revision is None:  # first apply of this process: restart rule
                current = self._current(kernel, kernel.elements, now)
                kernel_left = kernel_lifetimes(desired, current, kernel.peers)
            deadlines = self._lifetimes.plan(desired, received, now, kernel_left)
            plan = self._plan(kernel, desired, deadlines, now)
            commands = []
            if not self._skeleton_ready or not kernel.has_table:
                commands += table_commands(self.interface.name)
            commands += diff_commands(plan.diff)
            self._read_leaving(plan, desired)
            try:
                self.nft.run(commands)
            except NftError as exc:
                self._kernel = None  # the model may be wrong: list again
                if attempt == _NFT_ATTEMPTS:
                    raise
                log_event("nft_retry", revision=desired.revision, error=str(exc))
                continue
            self._commit_elements(kernel, plan, now)
            return kernel, plan, deadlines
        raise AssertionError("unreachable")  # pragma: no cover

    def _current(
        self, kernel: _KernelModel, keys: Iterable[ElementKey], now: float
    ) -> dict[ElementKey, KernelElement]:
        """The model's view of ``keys`` as the kernel would list them (expired ones gone)."""
        current = {}
        for key in keys:
            expires_at = kernel.elements.get(key)
            if expires_at is not None and expires_at > now:
                current[key] = KernelElement(timeout_seconds(expires_at - now))
        return current

    def _plan(
        self,
        kernel: _KernelModel,
        desired: DesiredState,
        deadlines: Mapping[str, float],
        now: float,
    ) -> _Plan:
        """Pick the sessions to look at and diff their elements against the model.

        Right after a listing that is every session and every element (so orphans go);
        otherwise the sessions that are new, gone, reshaped, or whose lifetime or
        liveness moved since they were written.
        """
        written = kernel.written
        full = not kernel.reconciled
        if full:
            scope = desired.sessions
            gone: tuple[str, ...] = ()
        else:
            scope = tuple(
                session
                for session in desired.sessions
                if _moved(written.get(session.session_id), session, deadlines, now)
            )
            ids = {session.session_id for session in desired.sessions}
            gone = tuple(sid for sid in written if sid not in ids)
        before = tuple(
            written[sid] for sid in [*gone, *(s.session_id for s in scope)] if sid in written
        )
        remaining = remaining_at({s.session_id: deadlines[s.session_id] for s in scope}, now)
        subset = desired if full else replace(desired, sessions=scope)
        wanted = desired_elements(subset, remaining)
        keys: Iterable[ElementKey] = kernel.elements if full else _keys(before)
        current = self._current(kernel, [*keys, *wanted], now)
        return _Plan(full, scope, before, gone, wanted, diff_elements(current, wanted))

    def _commit_elements(self, kernel: _KernelModel, plan: _Plan, now: float) -> None:
        """Bring the model in step with the transaction that just succeeded."""
        written_at = self._clock()  # the kernel's timers started at most this late
        for key in plan.diff.delete:
            kernel.elements.pop(key, None)
        for key, timeout in plan.diff.add.items():
            kernel.elements[key] = written_at + timeout
        for key in _keys(plan.before) if not plan.full else list(kernel.elements):
            expires_at = kernel.elements.get(key)
            if expires_at is not None and expires_at <= now:
                del kernel.elements[key]  # the kernel's timeout has passed
        kernel.has_table, kernel.reconciled, self._skeleton_ready = True, True, True
        for sid in plan.gone:
            del kernel.written[sid]
        by_tunnel: dict[str, set[ElementKey]] = {}
        for key in plan.wanted:
            by_tunnel.setdefault(key.tunnel_ip, set()).add(key)
        for session in plan.scope:
            keys = frozenset(
                key for ip in session_tunnels(session) for key in by_tunnel.get(ip, ())
            )
            expiries = [kernel.elements[key] for key in keys]
            kernel.written[session.session_id] = _Written(
                session, keys, min(expiries, default=0.0), bool(keys)
            )

    def _write_peers(self, kernel: _KernelModel, plan: _Plan) -> tuple[int, int]:
        """Remove peers of sessions that ended, then add or update those that are live."""
        wanted = {
            s.public_key: session_peer(s) for s in plan.scope if kernel.written[s.session_id].live
        }
        if plan.full:  # everything was looked at: orphan peers go too
            candidates = set(kernel.peers)
        else:
            candidates = {w.session.public_key for w in plan.before}
            candidates |= {s.public_key for s in plan.scope}
        stale = sorted(key for key in candidates if key in kernel.peers and key not in wanted)
        for public_key in stale:
            self.wireguard.remove_peer(public_key)
            del kernel.peers[public_key]
        changed = [
            peer
            for key, peer in sorted(wanted.items())
            if needs_update(kernel.peers.get(key), peer)
        ]
        for peer in changed:
            self.wireguard.set_peer(peer.config())
            kernel.peers[peer.public_key] = peer
        return len(changed), len(stale)

    def _read_leaving(self, plan: _Plan, desired: DesiredState) -> None:
        """Final counters of the elements this transaction deletes for good (not re-added).

        Owners come from the model's entries of the sessions in the plan, so the cost
        follows the leaving elements; right after a listing the model knows no sessions
        and the (already O(everything)) full plan goes by tunnel address instead.
        """
        leaving = [key for key in plan.diff.delete if key not in plan.diff.add]
        if not leaving:
            return
        if plan.full:
            tunnels = by_tunnel(desired, self._desired)  # the older document wrote them
            owners = {key: tunnels[key.tunnel_ip] for key in leaving if key.tunnel_ip in tunnels}
        else:
            owners = {key: w.session.session_id for w in plan.before for key in w.keys}
        self._finals.capture({key: owners[key] for key in leaving if key in owners})

    def _plan_timers(self, kernel: _KernelModel, deadlines: Mapping[str, float]) -> None:
        """When the next live session ends, and when the next one's counters are due."""
        ends = [deadlines[sid] - 1.0 for sid, entry in kernel.written.items() if entry.live]
        self._next_expiry = min(ends, default=None)
        self._finals.plan(kernel.written)

    def next_counter_read(self) -> float | None:
        """When ``read_expiring_counters`` has work: a live session nears its kernel timeout."""
        return self._finals.next_read

    def read_expiring_counters(self) -> int:
        """Read the counters of sessions whose elements are about to expire in the kernel."""
        kernel = self._kernel
        if kernel is None:
            return 0
        return self._finals.read_expiring(kernel.written, kernel.elements, self._clock())

    def take_final_counters(self) -> list[ElementCounters]:
        """Counters read just before their elements went, once each, for the next report."""
        return self._finals.take()

    def next_expiry(self) -> float | None:
        """When the next live session drops under one second left (its end, rounded down)."""
        return self._next_expiry

    def reapply(self) -> ApplyResult | None:
        """Apply the last document again: ends sessions whose time ran out, fixes drift."""
        if self._desired is None:
            return None
        return self.apply(self._desired, self._received_at)

    def status(self) -> dict[str, Any]:
        """What the agent believes the kernel holds, from its model: no kernel read.

        Cheap enough for every apply; counters and handshakes come with ``report``.
        """
        kernel = self._kernel
        now = self._clock()
        elements = (
            {k: KernelElement(timeout_seconds(t - now)) for k, t in kernel.elements.items()}
            if kernel
            else {}
        )
        peers = list(kernel.peers.values()) if kernel else []
        return describe(self._desired, self.remaining(), elements, peers, counters=False)

    def report(self) -> Reading:
        """Per-session lifetimes and the kernel's per-element and per-peer counters.

        Reads the whole table and every peer: for the periodic report, not every apply.
        """
        peers = self.wireguard.list_peers()
        elements = parse_set_listing(self.nft.list_table())
        status = describe(self._desired, self.remaining(), elements, peers, counters=True)
        desired = self._desired
        return Reading(
            status, None if desired is None else counters_report(desired, elements, peers)
        )


def _keys(written: Iterable[_Written]) -> set[ElementKey]:
    keys: set[ElementKey] = set()
    for entry in written:
        keys |= entry.keys
    return keys


def _moved(
    before: _Written | None, session: LiveSession, deadlines: Mapping[str, float], now: float
) -> bool:
    """Whether a session needs a look: new, reshaped, or its lifetime or liveness moved.

    Runs for every session of every apply, so the cheap float tests come first.
    """
    if before is None:
        return True
    deadline = deadlines[session.session_id]
    live = deadline - now >= 1.0  # the same as timeout_seconds(...) >= 1
    if before.live != live:
        return True
    if not live:
        return False
    if abs(before.expires_at - deadline) > LIFETIME_SLACK_S:
        return True
    return before.session is not session and not _same_shape(before.session, session)
