"""The agent's report: a golden document, round trips, and every bad shape refused."""

from __future__ import annotations

import json
import math
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy import AgentReport, ElementCounters, PeerReport, PolicyError, PortRange
from netpolicy.report import MAX_COUNTER, MAX_ELEMENTS, MAX_HANDSHAKE_S, MAX_PEERS
from tests.golden import assert_golden_json, load_json

KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
KEY2 = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="

THERMOSTAT = IPv4Address("192.168.1.20")
REPORT = AgentReport(
    revision=12,
    peers=(
        PeerReport(KEY, 1764547200.25, rx_bytes=9120, tx_bytes=48213),
        PeerReport(KEY2, None),
    ),
    elements=(
        ElementCounters("ses_thermo", THERMOSTAT, "tcp", PortRange(443, 443), 38, 2280, True),
        ElementCounters("ses_thermo", THERMOSTAT, "tcp", PortRange(8000, 8010), 4, 240),
        ElementCounters(
            "ses_camera", IPv6Address("fd00:1::30"), "udp", PortRange.single(5353), 0, 0
        ),
    ),
)


def golden() -> dict[str, Any]:
    data: dict[str, Any] = load_json("report.json")
    return data


def test_golden_report() -> None:
    assert_golden_json("report.json", REPORT.to_dict())
    assert AgentReport.from_dict(golden()) == REPORT
    assert AgentReport.from_json(REPORT.to_json()) == REPORT


def test_final_is_a_field_of_every_element() -> None:
    assert [e["final"] for e in golden()["elements"]] == [True, False, False]


def test_optional_fields_may_be_left_out() -> None:
    """What agents sent before the version field: the revision alone, or no ``final``."""
    assert AgentReport.from_dict({"revision": 3}) == AgentReport(3)
    element = {k: v for k, v in golden()["elements"][1].items() if k != "final"}
    peer = {"public_key": KEY}
    parsed = AgentReport.from_dict({"revision": 3, "peers": [peer], "elements": [element]})
    assert parsed.elements == (REPORT.elements[1],)
    assert parsed.peers == (PeerReport(KEY, None, 0, 0),)


def _mutated(path: list[str | int], value: Any) -> dict[str, Any]:
    doc = REPORT.to_dict()
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


def _without(path: list[str | int], name: str) -> dict[str, Any]:
    doc = REPORT.to_dict()
    target: Any = doc
    for step in path:
        target = target[step]
    del target[name]
    return doc


PEER: list[str | int] = ["peers", 0]
ELEMENT: list[str | int] = ["elements", 0]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # ports: ASCII digits in range, as a string
        (_mutated([*ELEMENT, "ports"], "abc"), "ports must look like"),
        (_mutated([*ELEMENT, "ports"], "٤٤٣"), "ports must look like"),  # Arabic-Indic digits
        (_mutated([*ELEMENT, "ports"], "\uff14\uff14\uff13"), "ports must look like"),  # fullwidth
        (_mutated([*ELEMENT, "ports"], "+443"), "ports must look like"),
        (_mutated([*ELEMENT, "ports"], " 443"), "ports must look like"),
        (_mutated([*ELEMENT, "ports"], "4_43"), "ports must look like"),
        (_mutated([*ELEMENT, "ports"], "443-"), "ports must look like"),
        (_mutated([*ELEMENT, "ports"], "0"), "1 to 65535"),
        (_mutated([*ELEMENT, "ports"], "65536"), "1 to 65535"),
        (_mutated([*ELEMENT, "ports"], "443-80"), "reversed"),
        (_mutated([*ELEMENT, "ports"], 443), "ports must be a string"),
        # numbers: integers, finite, bounded
        (_mutated([*PEER, "last_handshake"], 1e300), "last_handshake must be Unix seconds"),
        (_mutated([*PEER, "last_handshake"], math.nan), "last_handshake must be Unix seconds"),
        (_mutated([*PEER, "last_handshake"], math.inf), "last_handshake must be Unix seconds"),
        (_mutated([*PEER, "last_handshake"], -1), "last_handshake must be Unix seconds"),
        (_mutated([*PEER, "last_handshake"], "5"), "last_handshake must be Unix seconds"),
        (_mutated([*PEER, "last_handshake"], True), "last_handshake must be Unix seconds"),
        (_mutated([*PEER, "rx_bytes"], -1), "rx_bytes must be an integer"),
        (_mutated([*PEER, "tx_bytes"], 2.5), "tx_bytes must be an integer"),
        (_mutated([*ELEMENT, "packets"], MAX_COUNTER + 1), "packets must be an integer"),
        (_mutated([*ELEMENT, "packets"], 1.0), "packets must be an integer"),
        (_mutated([*ELEMENT, "packets"], 1e300), "packets must be an integer"),
        (_mutated([*ELEMENT, "bytes"], "5"), "bytes must be an integer"),
        (_mutated([*ELEMENT, "bytes"], True), "bytes must be an integer"),
        (_mutated([*ELEMENT, "bytes"], None), "bytes must be an integer"),
        (_mutated(["revision"], -1), "revision must be an integer"),
        (_mutated(["revision"], "12"), "revision must be an integer"),
        (_mutated(["revision"], 12.0), "revision must be an integer"),
        (_mutated(["revision"], 2**63), "revision must be an integer"),
        (_mutated(["revision"], False), "revision must be an integer"),
        # strings and names
        (_mutated([*ELEMENT, "session_id"], ""), "session_id must be"),
        (_mutated([*ELEMENT, "session_id"], "s" * 65), "session_id must be"),
        (_mutated([*ELEMENT, "session_id"], "sés"), "session_id must be"),
        (_mutated([*ELEMENT, "session_id"], "a b"), "session_id must be"),
        (_mutated([*ELEMENT, "session_id"], 7), "session_id must be a string"),
        (_mutated([*ELEMENT, "device_ip"], "thermostat"), "not an IP address"),
        (_mutated([*ELEMENT, "device_ip"], "192.168.001.20"), "not an IP address"),
        (_mutated([*ELEMENT, "device_ip"], "١٩٢.168.1.20"), "not an IP address"),
        (_mutated([*ELEMENT, "device_ip"], 3232235796), "device_ip must be a string"),
        (_mutated([*ELEMENT, "proto"], "icmp"), "tcp or udp"),
        (_mutated([*ELEMENT, "proto"], "TCP"), "tcp or udp"),
        (_mutated([*ELEMENT, "final"], "yes"), "final must be true or false"),
        (_mutated([*ELEMENT, "final"], 1), "final must be true or false"),
        (_mutated([*PEER, "public_key"], "abc"), "base64"),
        (_mutated([*PEER, "public_key"], KEY[:-4] + "===="), "WireGuard key"),
        (_mutated([*PEER, "public_key"], None), "public_key must be a string"),
        # shapes: unknown, missing, wrong container, too long
        (_mutated(["neighbours"], []), "unknown field 'neighbours'"),
        (_mutated([*ELEMENT, "tunnel_ip"], "100.64.0.2"), "unknown field 'tunnel_ip'"),
        (_mutated([*PEER, "endpoint"], "203.0.113.9:51820"), "unknown field 'endpoint'"),
        (_without([], "revision"), "needs the field 'revision'"),
        (_without(ELEMENT, "packets"), "needs the field 'packets'"),
        (_without(PEER, "public_key"), "needs the field 'public_key'"),
        (_mutated(["peers"], {}), "peers must be a list"),
        (_mutated(["elements"], "none"), "elements must be a list"),
        (_mutated(["elements"], [1]), "an element must be a JSON object"),
        (_mutated(["peers"], [[KEY]]), "a peer must be a JSON object"),
        (_mutated(["peers"], [{"public_key": KEY}] * (MAX_PEERS + 1)), "at most 4096"),
        (
            _mutated(["elements"], [REPORT.elements[0].to_dict()] * (MAX_ELEMENTS + 1)),
            "at most 65536",
        ),
        (_mutated(["version"], 2), "unsupported report version"),
        (_mutated(["version"], "1"), "unsupported report version"),
        (_mutated(["version"], True), "unsupported report version"),
        ([REPORT.to_dict()], "the report must be a JSON object"),
        (None, "the report must be a JSON object"),
    ],
)
def test_bad_shapes_are_refused(doc: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        AgentReport.from_dict(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"revision": 1, "peers": [{"public_key": "%s", "last_handshake": NaN}]}', "Unix"),
        (b'{"revision": 1, "peers": [{"public_key": "%s", "last_handshake": 1e400}]}', "Unix"),
        (b'{"revision": 1, "peers": [{"public_key": "%s", "last_handshake": Infinity}]}', "Unix"),
        (b'{"revision": 1e0}', "revision must be an integer"),
        (b'{"revision": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"revision": 1,', "not valid JSON"),
        (b'{"revision": 1, "x": "\xff"}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_bad_json_text_is_refused(text: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        AgentReport.from_json(text.replace(b"%s", KEY.encode()))


def test_the_agent_cannot_build_what_the_broker_refuses() -> None:
    ip = IPv4Address("192.168.1.20")
    with pytest.raises(PolicyError, match="last_handshake"):
        PeerReport(KEY, math.nan)
    with pytest.raises(PolicyError, match="packets"):
        ElementCounters("s1", ip, "tcp", PortRange(443, 443), -1, 0)
    with pytest.raises(PolicyError, match="at most"):
        AgentReport(1, peers=(PeerReport(KEY),) * (MAX_PEERS + 1))


sessions = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=64)
counters = st.integers(0, MAX_COUNTER)
port_ranges = st.tuples(st.integers(1, 65535), st.integers(0, 100)).map(
    lambda p: PortRange(p[0], min(65535, p[0] + p[1]))
)
elements = st.builds(
    ElementCounters,
    session_id=sessions,
    device_ip=st.ip_addresses(),
    proto=st.sampled_from(["tcp", "udp"]),
    ports=port_ranges,
    packets=counters,
    bytes=counters,
    final=st.booleans(),
)
peers = st.builds(
    PeerReport,
    public_key=st.sampled_from([KEY, KEY2]),
    last_handshake=st.none() | st.floats(0, MAX_HANDSHAKE_S),
    rx_bytes=counters,
    tx_bytes=counters,
)
reports = st.builds(
    AgentReport,
    revision=st.integers(0, 2**63 - 1),
    peers=st.lists(peers, max_size=4).map(tuple),
    elements=st.lists(elements, max_size=8).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(reports)
def test_every_report_the_agent_can_build_round_trips(report: AgentReport) -> None:
    assert AgentReport.from_json(report.to_json()) == report


@settings(max_examples=300, deadline=None)
@given(reports, st.data())
def test_any_one_field_of_another_json_type_is_refused(report: AgentReport, data: Any) -> None:
    """Swap one field's value for a value of a different JSON type: always a PolicyError."""
    doc = report.to_dict()
    targets: list[tuple[dict[str, Any], str]] = [(doc, "revision")]
    targets += [(p, name) for p in doc["peers"] for name in p]
    targets += [(e, name) for e in doc["elements"] for name in e]
    target, name = data.draw(st.sampled_from(targets))
    values: list[Any] = [[], {}, "x", 1.5, True, None, 7]
    others = [v for v in values if type(v) is not type(target[name])]
    if name == "last_handshake":  # null or any number is a handshake time
        others = [v for v in others if isinstance(v, list | dict | str | bool)]
    target[name] = data.draw(st.sampled_from(others))
    with pytest.raises(PolicyError):
        AgentReport.from_json(json.dumps(doc))
