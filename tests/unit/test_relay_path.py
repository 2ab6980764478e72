"""A relay path's per-datagram decisions: who may teach it an address, what it forwards."""

from __future__ import annotations

import pytest

from broker.relay.path import Drop, Limits, PathState, Side, TokenBucket
from netpolicy.errors import PolicyError
from netpolicy.relay import RelayPath, RelayState

from .relay_messages import data, initiation, keys, response

TECH = ("198.51.100.7", 40000)
HOME = ("203.0.113.9", 51820)
STRANGER = ("203.0.113.66", 40000)


def _path(expires_in: float = 60.0) -> tuple[PathState, str, str]:
    tech_key, router_key = keys()
    spec = RelayPath("s1", 30000, 30001, tech_key, router_key, expires_in)
    return PathState(spec, 0.0), tech_key, router_key


def _connected() -> tuple[PathState, str, str]:
    """Home pinned by its keepalive handshake, technician pinned by a confirmed one."""
    path, tech_key, router_key = _path()
    assert path.route(Side.HOME, HOME, initiation(11, tech_key), 0.1) is None  # no tech yet
    assert path.pinned(Side.HOME) == HOME
    assert path.route(Side.TECHNICIAN, TECH, initiation(22, router_key), 0.2) == HOME
    assert path.pinned(Side.TECHNICIAN) is None, "an initiation alone pins nothing"
    assert path.route(Side.HOME, HOME, response(33, 22, tech_key), 0.3) == TECH
    assert path.pinned(Side.TECHNICIAN) == TECH
    return path, tech_key, router_key


def test_a_confirmed_handshake_connects_both_ends() -> None:
    path, _, _ = _connected()
    assert path.route(Side.TECHNICIAN, TECH, data(33), 0.4) == HOME
    assert path.route(Side.HOME, HOME, data(22), 0.5) == TECH
    assert path.counters(Side.TECHNICIAN).packets == 2  # initiation + data


def test_junk_and_data_from_strangers_are_dropped_on_both_sides() -> None:
    path, _, _ = _connected()
    for side in Side:
        assert path.route(side, STRANGER, b"\x00" * 64, 1.0) is None
        assert path.route(side, STRANGER, data(22), 1.0) is None
    assert path.counters(Side.TECHNICIAN).drops == {Drop.MALFORMED: 1, Drop.UNKNOWN_SOURCE: 1}
    assert path.pinned(Side.TECHNICIAN) == TECH and path.pinned(Side.HOME) == HOME


def test_a_spoofed_first_packet_without_the_keys_pins_nothing() -> None:
    path, tech_key, _ = _path()
    stranger_key = keys()[0]
    assert path.route(Side.HOME, STRANGER, initiation(5, stranger_key), 0.1) is None
    assert path.route(Side.TECHNICIAN, STRANGER, initiation(6, stranger_key), 0.1) is None
    assert path.pinned(Side.HOME) is None and path.pinned(Side.TECHNICIAN) is None
    assert path.counters(Side.HOME).drops == {Drop.BAD_MAC: 1}
    assert path.route(Side.HOME, HOME, initiation(7, tech_key), 0.2) is None
    assert path.pinned(Side.HOME) == HOME


def test_a_replayed_initiation_from_elsewhere_cannot_move_the_technician() -> None:
    """A copy of the technician's initiation sent from another address is forwarded (the
    router rejects a replay) but the answer still goes to the first sender."""
    path, tech_key, router_key = _connected()
    hello = initiation(44, router_key)
    assert path.route(Side.TECHNICIAN, TECH, hello, 10.0) == HOME
    assert path.route(Side.TECHNICIAN, STRANGER, hello, 10.1) == HOME
    assert path.route(Side.HOME, HOME, response(55, 44, tech_key), 10.2) == TECH
    assert path.pinned(Side.TECHNICIAN) == TECH


def test_the_technician_moves_only_when_the_router_answers_its_new_address() -> None:
    path, tech_key, router_key = _connected()
    moved = ("198.51.100.7", 41000)
    assert path.route(Side.TECHNICIAN, moved, data(33), 20.0) is None  # data cannot move it
    assert path.route(Side.TECHNICIAN, moved, initiation(66, router_key), 20.1) == HOME
    assert path.pinned(Side.TECHNICIAN) == TECH
    assert path.route(Side.HOME, HOME, response(77, 66, tech_key), 20.2) == moved
    assert path.pinned(Side.TECHNICIAN) == moved


def test_another_sessions_technician_cannot_take_the_path() -> None:
    """It knows the router's key, so its initiation passes, but the router answers it with
    a mac1 keyed to *its* key, not this session's technician key: dropped, nothing pinned."""
    path, _, router_key = _connected()
    other_tech_key = keys()[0]
    intruder = ("198.51.100.99", 40000)
    assert path.route(Side.TECHNICIAN, intruder, initiation(88, router_key), 30.0) == HOME
    assert path.route(Side.HOME, HOME, response(99, 88, other_tech_key), 30.1) is None
    assert path.pinned(Side.TECHNICIAN) == TECH
    assert path.counters(Side.HOME).drops[Drop.BAD_MAC] == 1


def test_a_response_from_an_unpinned_address_is_dropped() -> None:
    path, tech_key, router_key = _connected()
    assert path.route(Side.TECHNICIAN, TECH, initiation(12, router_key), 40.0) == HOME
    assert path.route(Side.HOME, STRANGER, response(13, 12, tech_key), 40.1) is None
    assert path.counters(Side.HOME).drops[Drop.UNKNOWN_SOURCE] == 1


def test_an_answer_after_the_candidate_timed_out_is_dropped() -> None:
    path, tech_key, router_key = _connected()
    moved = ("198.51.100.7", 42000)
    assert path.route(Side.TECHNICIAN, moved, initiation(14, router_key), 50.0) == HOME
    assert path.route(Side.HOME, HOME, response(15, 14, tech_key), 56.0) is None
    assert path.pinned(Side.TECHNICIAN) == TECH


def test_the_home_moves_freely_only_while_no_technician_is_pinned() -> None:
    path, tech_key, router_key = _path()
    rebound = ("203.0.113.9", 60000)
    path.route(Side.HOME, HOME, initiation(1, tech_key), 0.1)
    path.route(Side.HOME, rebound, initiation(2, tech_key), 0.2)
    assert path.pinned(Side.HOME) == rebound
    path.route(Side.TECHNICIAN, TECH, initiation(3, router_key), 0.3)
    path.route(Side.HOME, rebound, response(4, 3, tech_key), 0.4)
    assert path.route(Side.HOME, HOME, initiation(5, tech_key), 0.5) == TECH
    assert path.pinned(Side.HOME) == rebound, "with a live technician only a confirmed move"
    assert path.route(Side.TECHNICIAN, TECH, response(6, 5, router_key), 0.6) == HOME
    assert path.pinned(Side.HOME) == HOME


def test_nothing_is_forwarded_after_the_deadline() -> None:
    path, _, _ = _connected()
    path.deadline = 5.0
    assert path.route(Side.TECHNICIAN, TECH, data(33), 5.0) is None
    assert path.counters(Side.TECHNICIAN).drops == {Drop.EXPIRED: 1}


def test_the_per_path_rate_limit_drops_the_excess_and_refills() -> None:
    tech_key, router_key = keys()
    spec = RelayPath("s1", 30000, 30001, tech_key, router_key, 60)
    path = PathState(spec, 0.0, Limits(packets_per_s=1000, bytes_per_s=10**9))
    path.route(Side.HOME, HOME, initiation(1, tech_key), 0.0)
    path.route(Side.TECHNICIAN, TECH, initiation(2, router_key), 0.0)
    path.route(Side.HOME, HOME, response(3, 2, tech_key), 0.0)
    sent = sum(path.route(Side.TECHNICIAN, TECH, data(3), 0.0) is not None for _ in range(500))
    assert 60 <= sent <= 70, "the burst is 50 ms of the rate (64 packets minimum)"
    assert path.counters(Side.TECHNICIAN).drops[Drop.RATE] == 500 - sent
    assert path.route(Side.TECHNICIAN, TECH, data(3), 0.1) == HOME


def test_a_flood_of_valid_looking_initiations_is_limited() -> None:
    path, _, router_key = _connected()
    passed = sum(
        path.route(Side.TECHNICIAN, STRANGER, initiation(100 + i, router_key), 30.0) is not None
        for i in range(100)
    )
    assert passed <= 10
    assert path.counters(Side.TECHNICIAN).drops[Drop.HANDSHAKE_RATE] >= 90


def test_token_bucket_never_exceeds_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0)
    assert sum(bucket.take(1, 100.0) for _ in range(20)) == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"home_port": 30000}, "must differ"),
        ({"technician_port": 80}, "port number"),
        ({"expires_in": -1}, "expires_in"),
        ({"technician_key": "nope"}, "base64"),
    ],
)
def test_relay_path_refuses_bad_fields(change: dict[str, object], message: str) -> None:
    tech_key, router_key = keys()
    fields: dict[str, object] = {
        "path_id": "s1",
        "technician_port": 30000,
        "home_port": 30001,
        "technician_key": tech_key,
        "router_key": router_key,
        "expires_in": 60,
    }
    with pytest.raises(PolicyError, match=message):
        RelayPath.from_dict({**fields, **change})


def test_relay_state_round_trips_and_refuses_shared_ports() -> None:
    tech_key, router_key = keys()
    one = RelayPath("s1", 30000, 30001, tech_key, router_key, 60)
    state = RelayState("r1", 3, (one,))
    assert RelayState.from_json(state.to_json()) == state
    two = RelayPath("s2", 30001, 30002, router_key, tech_key, 60)
    with pytest.raises(PolicyError, match="port 30001"):
        RelayState("r1", 4, (one, two))
