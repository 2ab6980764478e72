"""Reconcile against in-memory backends: idempotence, increments, order, lifetimes."""

from __future__ import annotations

import base64
import itertools
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from agent.nftables.backend import NftError
from agent.reconcile import InterfaceSpec, Reconciler
from agent.wireguard.backend import PeerConfig
from netpolicy import DesiredState, Grant, HomeNetwork, LiveSession, PortRange
from netpolicy.model import RELAY_KEEPALIVE_S
from tests.agent_fakes import FakeNftables, FakeWireGuard

NETWORK = HomeNetwork(
    lan=IPv4Network("192.168.1.0/24"),
    router_ip=IPv4Address("192.168.1.1"),
    tunnel_pool=IPv4Network("100.64.0.0/24"),
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def make_session(n: int, *ports: int, expires_in: float = 600.0, device: int = 10) -> LiveSession:
    grants = tuple(
        Grant(ip_address(f"192.168.1.{device}"), "tcp", PortRange.single(p))
        for p in ports or (443,)
    )
    return LiveSession(
        session_id=f"s{n}",
        public_key=key(n),
        preshared_key=key(100 + n),
        tunnel_ip=IPv4Address(f"100.64.0.{n + 1}"),
        grants=grants,
        expires_in=expires_in,
    )


def make_state(revision: int, *sessions: LiveSession) -> DesiredState:
    return DesiredState(home_id="home", revision=revision, network=NETWORK, sessions=sessions)


class Rig:
    """An agent on fakes sharing one clock; ``journal`` records nft and peer calls in order."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.nft = FakeNftables(self.clock)
        self.wg = FakeWireGuard()
        self.reconciler = self.restart()

    def restart(self) -> Reconciler:
        """A new agent process on the same (surviving) kernel state."""
        self.reconciler = Reconciler(
            self.wg, self.nft, InterfaceSpec("wgtest", key(99), 51820), self.clock
        )
        return self.reconciler

    def journal(self) -> list[object]:
        return [*self.nft.transactions, *self.wg.calls]

    def text(self) -> str:
        peers = [f"peer {p.public_key[:4]} {' '.join(p.allowed_ips)}" for p in self.wg.list_peers()]
        return "\n".join([self.nft.state_text(), *peers])


def test_first_apply_builds_skeleton_elements_and_peers() -> None:
    rig = Rig()
    result = rig.reconciler.apply(make_state(1, make_session(1, 443, 8443), make_session(2, 80)))
    assert (result.elements_added, result.peers_set) == (3, 2)
    assert rig.wg.interface == {
        "port": 51820,
        "addresses": ["100.64.0.1/32"],
        "routes": ["100.64.0.0/24"],
    }
    assert rig.text() == (
        "grants4 100.64.0.2 . 192.168.1.10 . tcp . 443 timeout 600\n"
        "grants4 100.64.0.2 . 192.168.1.10 . tcp . 8443 timeout 600\n"
        "grants4 100.64.0.3 . 192.168.1.10 . tcp . 80 timeout 600\n"
        f"peer {key(1)[:4]} 100.64.0.2/32\n"
        f"peer {key(2)[:4]} 100.64.0.3/32"
    )
    assert rig.wg.peers[key(1)].preshared_key == key(101)
    assert rig.nft.table is not None and rig.nft.table.rules["from_tunnel"]


def test_second_apply_writes_nothing() -> None:
    rig = Rig()
    state = make_state(1, make_session(1), make_session(2))
    rig.reconciler.apply(state)
    before = rig.journal()
    rig.clock.advance(5)
    result = rig.reconciler.apply(state)
    assert not result.changed
    assert rig.journal() == before


def test_adding_a_session_writes_only_its_elements_and_peer() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1)))
    calls = len(rig.wg.calls)
    rig.reconciler.apply(make_state(2, make_session(1), make_session(2, 22, 80)))
    (last,) = rig.nft.transactions[-1:]
    assert [next(iter(c)) for c in last] == ["add"]
    elems = last[0]["add"]["element"]["elem"]
    assert {e["elem"]["val"]["concat"][0] for e in elems} == {"100.64.0.3"}
    assert len(elems) == 2
    assert rig.wg.calls[calls:] == [f"set_peer {key(2)}"]


def test_revoke_deletes_elements_before_the_peer() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1), make_session(2)))
    transactions = len(rig.nft.transactions)
    order: list[str] = []
    remove_peer = rig.wg.remove_peer

    def recording_remove(public_key: str) -> None:
        order.append(f"remove after {len(rig.nft.transactions) - transactions} transaction(s)")
        remove_peer(public_key)

    rig.wg.remove_peer = recording_remove  # type: ignore[method-assign]
    result = rig.reconciler.apply(make_state(2, make_session(1)))
    assert (result.elements_deleted, result.peers_removed) == (1, 1)
    assert order == ["remove after 1 transaction(s)"]
    assert "100.64.0.3" not in rig.nft.state_text()
    assert list(rig.wg.peers) == [key(1)]


def test_elements_go_in_before_peers() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1)))
    seen: list[str] = []
    set_peer = rig.wg.set_peer

    def recording_set(peer: PeerConfig) -> None:
        seen.append(rig.nft.state_text())
        set_peer(peer)

    rig.wg.set_peer = recording_set  # type: ignore[method-assign]
    rig.reconciler.apply(make_state(2, make_session(1), make_session(2)))
    assert "100.64.0.3" in seen[0]


def test_a_relayed_session_peer_dials_the_relay_and_is_pointed_back_after_roaming() -> None:
    rig = Rig()
    session = replace(make_session(1), relay_endpoint="203.0.113.50:40001")
    rig.reconciler.apply(make_state(1, session))
    (peer,) = rig.wg.list_peers()
    assert (peer.endpoint, peer.keepalive_s) == ("203.0.113.50:40001", RELAY_KEEPALIVE_S)
    rig.wg.peers[peer.public_key] = replace(peer, endpoint="198.51.100.99:40000")  # roamed
    rig.reconciler.apply(make_state(1, session), relist=True)
    (peer,) = rig.wg.list_peers()
    assert peer.endpoint == "203.0.113.50:40001"


def test_same_revision_keeps_the_deadline() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)))
    rig.clock.advance(100)
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)))  # the same file re-read
    assert rig.reconciler.remaining() == {"s1": 500.0}
    assert len(rig.nft.transactions) == 1


def test_new_revision_takes_the_brokers_lifetime() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)))
    rig.clock.advance(100)
    rig.reconciler.apply(make_state(2, make_session(1, expires_in=300)))
    assert rig.reconciler.remaining() == {"s1": 300.0}
    assert "timeout 300" in rig.nft.state_text()


def test_new_session_deadline_anchors_on_arrival_not_on_a_late_retry() -> None:
    rig = Rig()
    arrived = rig.clock()
    rig.clock.advance(30)  # e.g. the first attempt failed and this is the retry
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)), received_at=arrived)
    assert rig.reconciler.remaining() == {"s1": 570.0}


def test_restart_never_extends_a_lifetime() -> None:
    rig = Rig()
    state = make_state(1, make_session(1, expires_in=600))
    rig.reconciler.apply(state)
    rig.clock.advance(300)
    rig.restart().apply(state)  # the stale document still says 600 s
    assert rig.reconciler.remaining() == {"s1": 300.0}
    # Only the skeleton is re-asserted; no element is written again.
    assert len(rig.nft.transactions) == 2
    assert not any("element" in body for c in rig.nft.transactions[-1] for body in c.values())


def test_restart_takes_the_shorter_document_lifetime() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)))
    rig.clock.advance(100)
    rig.restart().apply(make_state(2, make_session(1, expires_in=200)))
    assert rig.reconciler.remaining() == {"s1": 200.0}
    assert "timeout 200" in rig.nft.state_text()


def test_restart_after_kernel_expiry_does_not_revive_the_session() -> None:
    rig = Rig()
    state = make_state(1, make_session(1, expires_in=60))
    rig.reconciler.apply(state)
    rig.clock.advance(61)  # the agent was down: the kernel dropped the elements itself
    result = rig.restart().apply(state)
    assert result.peers_removed == 1
    assert rig.reconciler.remaining() == {"s1": 0.0}
    assert rig.text() == ""


def test_timer_removes_the_peer_when_the_deadline_passes() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=10.5), make_session(2)))
    assert rig.reconciler.next_expiry() == pytest.approx(rig.clock() + 9.5)
    rig.clock.advance(9.6)
    result = rig.reconciler.reapply()
    assert result is not None and result.peers_removed == 1
    assert list(rig.wg.peers) == [key(2)]
    assert "100.64.0.2" not in rig.nft.state_text()  # the leftover element is cleaned too
    assert rig.reconciler.next_expiry() == pytest.approx(1000.0 + 599.0)


def test_startup_removes_stale_peers_and_elements() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1), make_session(2)))
    rig.wg.set_peer(PeerConfig(key(50), ("100.64.0.60/32",)))  # an orphan nobody asked for
    rig.restart().apply(make_state(2, make_session(2)))
    assert sorted(rig.wg.peers) == [key(2)]
    assert rig.nft.state_text() == "grants4 100.64.0.3 . 192.168.1.10 . tcp . 443 timeout 600"


def test_nft_race_is_retried_once_on_a_fresh_listing() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1)))
    rig.nft.fail_next = "Error: Could not process rule: No such file or directory"
    rig.reconciler.apply(make_state(2, make_session(1), make_session(2)))
    assert sorted(rig.wg.peers) == [key(1), key(2)]


def test_failed_transaction_leaves_peers_and_lifetimes_alone() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1)))
    before = rig.text()

    def always_fail(commands: list[dict[str, object]]) -> None:
        raise NftError("nft: Error: syntax error")

    rig.nft.run = always_fail  # type: ignore[method-assign]
    with pytest.raises(NftError, match="syntax error"):
        rig.reconciler.apply(make_state(2, make_session(2)))
    assert rig.text() == before
    assert rig.reconciler.desired is not None and rig.reconciler.desired.revision == 1


def test_report_counts_per_element_and_peer() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(3, make_session(1, 443, 8000)))
    report = rig.reconciler.report().status
    assert report["revision"] == 3
    assert report["sessions"] == {"s1": {"remaining": 600.0, "peer": True}}
    assert [(e["session_id"], e["ports"], e["packets"]) for e in report["elements"]] == [
        ("s1", "443", 0),
        ("s1", "8000", 0),
    ]
    assert report["peers"][0]["session_id"] == "s1"
    assert "preshared" not in str(report)


STATES = {
    "one": make_state(1, make_session(1, 443)),
    "two": make_state(2, make_session(1, 443, 80), make_session(2, 22)),
    "other": make_state(3, make_session(3, 8080, device=20)),
    "empty": make_state(4),
}


@pytest.mark.parametrize("order", list(itertools.permutations(STATES)))
def test_any_order_of_states_converges_to_the_last(order: tuple[str, ...]) -> None:
    """Tailscale-style: replay the states in every order; each apply lands on its golden."""
    golden = {}
    for name, state in STATES.items():
        fresh = Rig()
        fresh.reconciler.apply(state)
        golden[name] = fresh.text()
    rig = Rig()
    for name in order:
        rig.reconciler.apply(STATES[name])
        assert rig.text() == golden[name]
        rig.reconciler.apply(STATES[name])  # and nothing moves on a second pass
        assert rig.text() == golden[name]


def test_applies_trust_the_model_and_list_the_kernel_only_when_asked() -> None:
    rig = Rig()
    listings: list[int] = []
    list_table = rig.nft.list_table

    def counting_list() -> dict[str, object]:
        listings.append(1)
        return list_table()

    rig.nft.list_table = counting_list  # type: ignore[method-assign]
    rig.reconciler.apply(make_state(1, make_session(1)))
    for revision in range(2, 6):
        rig.clock.advance(1)
        rig.reconciler.apply(make_state(revision, *(make_session(n) for n in range(1, revision))))
    assert len(listings) == 1  # at start only
    # Someone deletes an element behind the agent's back: the resync puts it back.
    rig.nft.run([{"delete": {"element": {"family": "inet", "table": "ztb", "name": "grants4",
                 "elem": [{"concat": ["100.64.0.2", "192.168.1.10", "tcp", 443]}]}}}])  # fmt: skip
    result = rig.reconciler.apply(
        make_state(5, *(make_session(n) for n in range(1, 5))), relist=True
    )
    assert len(listings) == 2 and result.elements_added == 1
    assert "100.64.0.2" in rig.nft.state_text()


def test_the_model_forgets_elements_the_kernel_expired() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=10), make_session(2)))
    rig.clock.advance(20)  # the kernel dropped s1's element; the agent slept through it
    # A new revision without s1: nothing to delete (the kernel has nothing), no error.
    result = rig.reconciler.apply(make_state(2, make_session(2, expires_in=580)))
    assert (result.elements_deleted, result.peers_removed) == (0, 1)
    assert rig.reconciler.status()["elements"] == [
        {
            "session_id": "s2",
            "tunnel_ip": "100.64.0.3",
            "device_ip": "192.168.1.10",
            "proto": "tcp",
            "ports": "443",
            "expires": 580,
        }
    ]
