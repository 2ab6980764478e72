"""The nftables compiler: golden output, and properties of the incremental diff."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netpolicy import DesiredState, Grant, HomeNetwork, LiveSession, PortRange, nft
from netpolicy.nft import ElementKey, KernelElement
from tests.golden import assert_golden_json, load_json

REMAINING = {"ses_thermo": 1800.9, "ses_camera": 600.0}


def golden_state() -> DesiredState:
    return DesiredState.from_dict(load_json("netpolicy/two_sessions.json"))


def test_table_skeleton_matches_golden() -> None:
    assert_golden_json("netpolicy/table_commands.json", nft.script(nft.table_commands("wg-ztb")))


def test_first_apply_matches_golden() -> None:
    desired = nft.desired_elements(golden_state(), REMAINING)
    commands = nft.diff_commands(nft.diff_elements({}, desired))
    assert_golden_json("netpolicy/first_apply.json", nft.script(commands))


def test_timeouts_are_whole_seconds_rounded_down() -> None:
    """libnftables JSON silently ignores non-integer timeouts: never emit one."""
    desired = nft.desired_elements(golden_state(), {"ses_thermo": 10.99, "ses_camera": 1.0})
    assert set(desired.values()) == {10, 1}
    for command in nft.diff_commands(nft.diff_elements({}, desired)):
        for elem in command["add"]["element"]["elem"]:
            assert type(elem["elem"]["timeout"]) is int


def test_sessions_with_under_a_second_left_compile_to_nothing() -> None:
    assert nft.desired_elements(golden_state(), {"ses_thermo": 0.99}) == {}


def test_ipv6_grants_go_to_the_ipv6_set_with_the_ipv6_tunnel_address() -> None:
    desired = nft.desired_elements(golden_state(), REMAINING)
    v6 = [key for key in desired if key.family == 6]
    assert v6 == [ElementKey(6, "fd00:96:1::3", "fd00:1::21", "tcp", 554, 554)]
    assert v6[0].set_name == nft.SET6


def test_changed_lifetime_is_replaced_in_one_transaction() -> None:
    key = ElementKey(4, "100.96.1.2", "192.168.1.20", "tcp", 443, 443)
    diff = nft.diff_elements({key: KernelElement(expires=100)}, {key: 50})
    commands = nft.diff_commands(diff)
    assert [next(iter(c)) for c in commands] == ["delete", "add"]
    assert nft.diff_elements({key: KernelElement(expires=100)}, {key: 101}).add == {}


def test_kernel_listing_parses_back_to_keys() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {
                "set": {
                    "family": "inet",
                    "table": "ztb",
                    "name": "grants4",
                    "elem": [
                        {
                            "elem": {
                                "val": {
                                    "concat": [
                                        "100.96.1.3",
                                        "192.168.1.21",
                                        "udp",
                                        {"range": [5000, 5010]},
                                    ]
                                },
                                "timeout": 600,
                                "expires": 598,
                                "counter": {"packets": 3, "bytes": 180},
                            }
                        }
                    ],
                }
            },
            {"set": {"family": "inet", "table": "fw4", "name": "grants4", "elem": ["1.2.3.4"]}},
        ]
    }
    parsed = nft.parse_set_listing(listing)
    key = ElementKey(4, "100.96.1.3", "192.168.1.21", "udp", 5000, 5010)
    assert parsed == {key: KernelElement(expires=598, packets=3, bytes=180)}


# --- properties ---------------------------------------------------------------------------

NETWORK = HomeNetwork.from_dict(
    {
        "lan": "192.168.1.0/24",
        "router_ip": "192.168.1.1",
        "tunnel_pool": "100.96.1.0/24",
        "lan6": "fd00:1::/64",
        "tunnel_pool6": "fd00:96:1::/64",
    }
)
KEYS = [
    "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
    "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
    "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=",
    "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
]


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    if draw(st.booleans()) and draw(st.booleans()):
        ip: IPv4Address | IPv6Address = IPv6Address(f"fd00:1::{draw(st.integers(2, 9)):x}")
    else:
        ip = IPv4Address(f"192.168.1.{draw(st.integers(2, 9))}")
    first = draw(st.integers(1, 65535))
    last = draw(st.integers(first, min(65535, first + draw(st.sampled_from([0, 0, 5, 300])))))
    return Grant(ip, draw(st.sampled_from(["tcp", "udp"])), PortRange(first, last))


@st.composite
def states(draw: st.DrawFn) -> tuple[DesiredState, dict[str, float]]:
    slots = draw(st.lists(st.integers(0, len(KEYS) - 1), unique=True, max_size=len(KEYS)))
    sessions = []
    remaining: dict[str, float] = {}
    for slot in slots:
        sid = f"ses_{slot}"
        sessions.append(
            LiveSession(
                session_id=sid,
                public_key=KEYS[slot],
                tunnel_ip=IPv4Address(f"100.96.1.{slot + 2}"),
                tunnel_ip6=IPv6Address(f"fd00:96:1::{slot + 2:x}"),
                grants=tuple(draw(st.lists(grants(), min_size=1, max_size=5))),
                expires_in=600,
            )
        )
        remaining[sid] = draw(st.floats(0, 8 * 3600, allow_nan=False))
    return DesiredState("home", 1, NETWORK, tuple(sessions)), remaining


def kernel_after(
    current: dict[ElementKey, KernelElement], commands: list[dict[str, Any]]
) -> dict[ElementKey, KernelElement]:
    """A model of what the kernel holds after a transaction of our commands."""
    result = dict(current)
    for command in commands:
        ((verb, body),) = command.items()
        family = 4 if body["element"]["name"] in (nft.SET4, nft.RANGES4) else 6
        for raw in body["element"]["elem"]:
            value = raw["elem"]["val"] if verb == "add" else raw
            tunnel, device, proto, port = value["concat"]
            first, last = port["range"] if isinstance(port, dict) else (port, port)
            key = ElementKey(family, tunnel, device, proto, first, last)
            if verb == "delete":
                assert key in result, "deleting an element that is not there aborts the transaction"
                del result[key]
            else:
                assert key not in result, "adding an existing element would keep its old timeout"
                result[key] = KernelElement(expires=raw["elem"]["timeout"])
    return result


def as_kernel(elements: dict[ElementKey, int]) -> dict[ElementKey, KernelElement]:
    return {key: KernelElement(expires=timeout) for key, timeout in elements.items()}


@settings(max_examples=300, deadline=None)
@given(states(), states())
def test_diff_applied_to_a_yields_b(
    a: tuple[DesiredState, dict[str, float]], b: tuple[DesiredState, dict[str, float]]
) -> None:
    before = as_kernel(nft.desired_elements(*a))
    wanted = nft.desired_elements(*b)
    after = kernel_after(before, nft.diff_commands(nft.diff_elements(before, wanted)))
    assert set(after) == set(wanted)
    for key, element in after.items():
        assert abs(element.expires - wanted[key]) <= nft.LIFETIME_SLACK_S


@settings(max_examples=200, deadline=None)
@given(states())
def test_applying_the_same_state_twice_writes_nothing(
    b: tuple[DesiredState, dict[str, float]],
) -> None:
    kernel = as_kernel(nft.desired_elements(*b))
    assert not nft.diff_elements(kernel, nft.desired_elements(*b))


@settings(max_examples=300, deadline=None)
@given(states())
def test_nothing_outside_the_grants_is_compiled(b: tuple[DesiredState, dict[str, float]]) -> None:
    state, remaining = b
    for key, timeout in nft.desired_elements(state, remaining).items():
        owners = [
            s for s in state.sessions if key.tunnel_ip in (str(s.tunnel_ip), str(s.tunnel_ip6))
        ]
        assert len(owners) == 1
        session = owners[0]
        assert any(
            str(g.device_ip) == key.device_ip
            and g.proto == key.proto
            and g.ports.covers(PortRange(key.first, key.last))
            for g in session.grants
        )
        # never longer than the session has left, never more than a second shorter
        assert remaining[session.session_id] - 1 < timeout <= remaining[session.session_id]
        assert key.device_ip != str(NETWORK.router_ip)


@st.composite
def lifetime_changes(draw: st.DrawFn) -> tuple[DesiredState, dict[str, float], dict[str, float]]:
    """One state seen twice: every session's remaining lifetime is kept, moved within the
    rounding slack, or changed beyond it (shorter or longer); at least one is changed."""
    state, before = draw(states())
    live = [sid for sid, left in before.items() if left >= 1]
    assume(live)
    changed = set(draw(st.lists(st.sampled_from(live), min_size=1, unique=True)))
    after: dict[str, float] = {}
    for sid, left in before.items():
        if sid in changed:
            moved = draw(st.floats(1, 8 * 3600, allow_nan=False))
            assume(abs(int(moved) - int(left)) > nft.LIFETIME_SLACK_S)
            after[sid] = moved
        else:
            slack = float(nft.LIFETIME_SLACK_S)
            after[sid] = max(0.0, left + draw(st.sampled_from([0.0, -slack, slack])))
    return state, before, after


@settings(max_examples=200, deadline=None)
@given(lifetime_changes())
def test_changed_lifetimes_are_replaced_and_the_rest_left_alone(
    change: tuple[DesiredState, dict[str, float], dict[str, float]],
) -> None:
    state, before, after = change
    kernel = as_kernel(nft.desired_elements(state, before))
    wanted = nft.desired_elements(state, after)
    diff = nft.diff_elements(kernel, wanted)
    result = kernel_after(kernel, nft.diff_commands(diff))
    assert set(result) == set(wanted)
    replaced = set(diff.add) & set(kernel)
    assert replaced, "a changed lifetime replaces its elements"
    for key in set(kernel) & set(wanted):
        moved = abs(kernel[key].expires - wanted[key]) > nft.LIFETIME_SLACK_S
        assert (key in replaced) == moved
        assert (key in diff.delete) == moved
        if moved:
            assert result[key].expires == wanted[key]
        else:
            assert result[key] == kernel[key], "an element within the slack is not rewritten"
