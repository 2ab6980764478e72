"""The vocabulary: parsing, round trips and the validation that keeps grants inside a home."""

from __future__ import annotations

import base64
import copy
from ipaddress import IPv4Address, ip_address
from typing import Any

import pytest

from netpolicy import (
    DesiredState,
    Grant,
    GrantSpec,
    HomeNetwork,
    LiveSession,
    PolicyError,
    PortRange,
    format_duration,
    parse_duration,
    validate_duration,
    validate_public_key,
)
from netpolicy.grants import parse_ip
from netpolicy.validation import validate_wireguard_key
from tests.golden import load_json

KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def golden_document() -> dict[str, Any]:
    doc: dict[str, Any] = load_json("netpolicy/two_sessions.json")
    return doc


def test_document_round_trips() -> None:
    state = DesiredState.from_dict(golden_document())
    assert DesiredState.from_json(state.to_json()) == state
    assert state.revision == 7
    assert [s.session_id for s in state.sessions] == ["ses_thermo", "ses_camera"]


def test_overlapping_ports_of_one_device_merge() -> None:
    ip = IPv4Address("192.168.1.20")
    session = LiveSession(
        "s",
        KEY,
        IPv4Address("100.96.1.2"),
        (
            Grant(ip, "tcp", PortRange(440, 445)),
            Grant(ip, "tcp", PortRange(443, 450)),
            Grant(ip, "tcp", PortRange(451, 451)),
            Grant(ip, "udp", PortRange(443, 443)),
        ),
        60,
    )
    assert [(g.proto, str(g.ports)) for g in session.grants] == [("tcp", "440-451"), ("udp", "443")]


def _mutated(path: list[str | int], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(golden_document())
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


GRANT = ["sessions", 0, "grants", 0]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["network", "lan"], "0.0.0.0/0", "private unicast"),
        (["network", "lan"], "8.8.8.0/24", "private unicast"),
        (["network", "lan"], "192.168.1.0/33", "CIDR"),
        (["network", "lan"], "192.168.1.5/24", "CIDR"),
        (["network", "router_ip"], "10.0.0.1", "not inside the LAN"),
        (["network", "tunnel_pool"], "192.168.1.0/25", "overlaps"),
        ([*GRANT, "device_ip"], "192.168.1.1", "router itself"),
        ([*GRANT, "device_ip"], "192.168.1.255", "broadcast"),
        ([*GRANT, "device_ip"], "192.168.1.0", "network address"),
        ([*GRANT, "device_ip"], "192.168.2.20", "not inside the home LAN"),
        ([*GRANT, "device_ip"], "127.0.0.1", "not inside the home LAN"),
        ([*GRANT, "device_ip"], "224.0.0.1", "not inside the home LAN"),
        ([*GRANT, "device_ip"], "100.96.1.3", "not inside the home LAN"),
        ([*GRANT, "device_ip"], "not-an-ip", "valid device_ip"),
        ([*GRANT, "ports"], "0", "1 to 65535"),
        ([*GRANT, "ports"], "65536", "1 to 65535"),
        ([*GRANT, "ports"], "500-400", "reversed"),
        ([*GRANT, "ports"], "http", "must look like"),
        ([*GRANT, "proto"], "icmp", "tcp or udp"),
        (["sessions", 0, "grants"], [], "no grants"),
        (["sessions", 0, "expires_in"], -1, "expires_in"),
        (["sessions", 0, "expires_in"], 8 * 3600 + 1, "expires_in"),
        (["sessions", 0, "expires_in"], "soon", "number of seconds"),
        (["sessions", 0, "public_key"], "short", "base64"),
        (["sessions", 0, "public_key"], "A" * 32, "32 bytes"),
        (["sessions", 0, "tunnel_ip"], "100.96.2.9", "tunnel pool"),
        (["sessions", 0, "tunnel_ip"], "100.96.1.0", "tunnel pool"),
        (["sessions", 0, "tunnel_ip"], "100.96.1.3", "appears in two sessions"),
        (["sessions", 0, "session_id"], "ses_camera", "appears in two sessions"),
        (["sessions", 1, "tunnel_ip6"], None, "needs an IPv6 tunnel address"),
        (["version"], 99, "unsupported"),
        (["revision"], "7", "integer"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(
    path: list[str | int], value: Any, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        DesiredState.from_dict(_mutated(path, value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("thermostat:tcp/443", ("thermostat", "tcp", "443")),
        ("camera:udp/5000-5010", ("camera", "udp", "5000-5010")),
        ("nas-1.local:tcp/8000", ("nas-1.local", "tcp", "8000")),
    ],
)
def test_grant_specs_parse(text: str, expected: tuple[str, str, str]) -> None:
    spec = GrantSpec.parse(text)
    assert (spec.device, spec.proto, str(spec.ports)) == expected
    assert str(spec) == text


@pytest.mark.parametrize(
    "text",
    [
        "thermostat",
        "thermostat:tcp",
        "thermostat:icmp/1",
        ":tcp/1",
        "t:tcp/0",
        "t:tcp/9-1",
        "t:tcp/x",
        "t:tcp/\u0664\u0664\u0663",  # Arabic-Indic digits: int() reads them as 443
        "t:tcp/+443",
        "t:tcp/4_43",
    ],
)
def test_bad_grant_specs_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        GrantSpec.parse(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("45s", 45), ("30m", 1800), ("1h30m", 5400), ("2h", 7200)]
)
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "m", "30x", "-5m", "1.5h", "\u0669\u0660", "\u0663m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "cap", "ok"),
    [
        (1, 3600, True),
        (3600, 3600, True),
        (0, 3600, False),
        (-5, 3600, False),
        (3601, 3600, False),
        (9 * 3600, 10 * 3600, False),
    ],
)
def test_duration_caps(seconds: int, cap: int, ok: bool) -> None:
    if ok:
        assert validate_duration(seconds, cap) == seconds
    else:
        with pytest.raises(PolicyError):
            validate_duration(seconds, cap)


def test_home_network_refuses_tiny_lan() -> None:
    with pytest.raises(PolicyError, match="too small"):
        HomeNetwork.from_dict(
            {"lan": "192.168.1.0/31", "router_ip": "192.168.1.0", "tunnel_pool": "100.96.0.0/24"}
        )


def test_public_key_accepts_wg_format() -> None:
    assert validate_public_key(KEY) == KEY


LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",  # 0
    "0100000000000000000000000000000000000000000000000000000000000000",  # 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p = 0
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1 = 1
    "0000000000000000000000000000000000000000000000000000000000000080",  # 0, top bit set
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",  # top bit set
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # top bit set
]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_public_keys_are_refused(point: str) -> None:
    """X25519 with these gives a known shared value: libsodium refuses the same list."""
    text = base64.b64encode(bytes.fromhex(point)).decode()
    with pytest.raises(PolicyError, match="low-order"):
        validate_public_key(text)
    assert validate_wireguard_key(text) == bytes.fromhex(point)  # a fine PSK shape
    with pytest.raises(PolicyError, match="low-order"):
        grant = Grant(IPv4Address("192.168.1.20"), "tcp", PortRange.single(443))
        LiveSession("s", text, IPv4Address("100.96.1.2"), (grant,), 60)


def test_neighbours_of_low_order_points_are_ordinary_keys() -> None:
    for point in LOW_ORDER[:7]:
        raw = bytearray(bytes.fromhex(point))
        raw[5] ^= 1
        assert validate_public_key(base64.b64encode(raw).decode())


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3.04", "1.2.3",
     "1.2.3.4.5", "1.2.3.4\n", " 1.2.3.4", "\u0661.2.3.4", "1..2.3", "", "::1", "fd00::1:2"],
)  # fmt: skip
def test_fast_address_parsing_agrees_with_ipaddress(text: str) -> None:
    try:
        expected: object = ip_address(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_ip(text)
    else:
        assert parse_ip(text) == expected and type(parse_ip(text)) is type(expected)
