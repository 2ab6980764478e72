"""The benchmark's baseline allows exactly what ztb allows: same tuples, same default drop.

The baseline's chain is run through a small interpreter of the few expressions it uses
(anything else fails the test), and compared packet by packet with ztb's set semantics.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lab.bench import baseline, workload
from netpolicy import nft
from netpolicy.model import DesiredState
from netpolicy.nft import ElementKey
from tests.unit.test_nft_compile import REMAINING, golden_state, states

Packet = tuple[str, str, str, int]  # source, destination, protocol, destination port


def _field(packet: Packet, left: dict[str, Any]) -> Any:
    src, dst, proto, port = packet
    if "meta" in left:
        assert left["meta"] == {"key": "l4proto"}
        return proto
    payload = left["payload"]
    if payload["protocol"] == "th":
        assert payload["field"] == "dport"
        return port
    family = 4 if payload["protocol"] == "ip" else 6
    if ip_address(src).version != family:
        return None  # an ip6 match never matches an IPv4 packet, and the other way round
    return {"saddr": src, "daddr": dst}[payload["field"]]


def _matches(packet: Packet, match: dict[str, Any]) -> bool:
    assert match["op"] == "=="
    seen, right = _field(packet, match["left"]), match["right"]
    if isinstance(right, dict):
        low, high = right["range"]
        return isinstance(seen, int) and low <= seen <= high
    return bool(seen == right)


class GrantChain:
    """A model of the kernel's grant chain: rules in order, each with its handle; it also
    checks that ``from_tunnel`` jumps to it and then drops."""

    def __init__(self) -> None:
        self.rules: list[tuple[int, list[dict[str, Any]]]] = []
        self.from_tunnel: list[list[dict[str, Any]]] = []
        self.next_handle = 1

    def apply(self, commands: list[dict[str, Any]]) -> list[int]:
        """Run commands on the grant chain; the handles of the rules made, in order."""
        made: list[int] = []
        for command in commands:
            ((verb, body),) = command.items()
            if verb == "flush" and body["chain"]["name"] == baseline.GRANT_RULES:
                self.rules = []
            rule = body.get("rule", {})
            if rule.get("chain") == nft.CHAIN_FROM_TUNNEL:
                self.from_tunnel.append(rule["expr"])
            if rule.get("chain") != baseline.GRANT_RULES:
                continue
            if verb == "delete":
                assert rule["handle"] in self.handles(), "deleting a missing rule aborts"
                self.rules = [r for r in self.rules if r[0] != rule["handle"]]
                continue
            assert verb == "add" and "handle" not in rule, "appended, never placed"
            self.rules.append((self.next_handle, rule["expr"]))
            made.append(self.next_handle)
            self.next_handle += 1
        return made

    def handles(self) -> list[int]:
        return [handle for handle, _ in self.rules]


def baseline_verdict(commands: list[dict[str, Any]], packet: Packet) -> str:
    chain = GrantChain()
    chain.apply(commands)
    return chain_verdict(chain, packet)


def chain_verdict(chain: GrantChain, packet: Packet) -> str:
    """Walk the grant chain as the kernel would (first terminal verdict wins); without
    one, ``from_tunnel`` continues after its jump, to its drop."""
    jump = {"jump": {"target": baseline.GRANT_RULES}}
    assert chain.from_tunnel == [[jump], [{"counter": None}, {"drop": None}]]
    for _, expr in chain.rules:
        *conditions, verdict = expr
        tests = [e["match"] for e in conditions if "match" in e]
        assert all(set(e) <= {"match", "counter"} for e in conditions), expr
        if all(_matches(packet, t) for t in tests):
            ((name, _),) = verdict.items()
            return str(name)
    return "drop"


def ztb_verdict(elements: dict[ElementKey, int], packet: Packet) -> str:
    src, dst, proto, port = packet
    for key in elements:
        hit = (key.tunnel_ip, key.device_ip, key.proto) == (src, dst, proto)
        if hit and key.first <= port <= key.last:
            return "accept"
    return "drop"


def packets_around(elements: dict[ElementKey, int]) -> list[Packet]:
    """Every grant's edges and just outside them, and each tuple with a wrong field."""
    keys = list(elements)
    tunnels = {k.tunnel_ip for k in keys} | {"100.96.1.250"}
    devices = {k.device_ip for k in keys}
    found: list[Packet] = []
    for key in keys:
        for port in {key.first - 1, key.first, key.last, key.last + 1} - {0, 65536}:
            for proto in ("tcp", "udp"):
                found.append((key.tunnel_ip, key.device_ip, proto, port))
        found += [(t, key.device_ip, key.proto, key.first) for t in tunnels]
        found += [(key.tunnel_ip, d, key.proto, key.first) for d in devices]
    return found


def assert_same_policy(elements: dict[ElementKey, int]) -> None:
    commands = baseline.table_commands("wg0", elements)
    for packet in packets_around(elements):
        assert baseline_verdict(commands, packet) == ztb_verdict(elements, packet), packet


def assert_chain_allows(chain: GrantChain, elements: dict[ElementKey, int]) -> None:
    for packet in packets_around(elements):
        assert chain_verdict(chain, packet) == ztb_verdict(elements, packet), packet


@settings(max_examples=100, deadline=None)
@given(states(), st.data())
def test_incremental_changes_keep_the_same_verdicts(
    b: tuple[DesiredState, dict[str, float]], data: st.DataObject
) -> None:
    """One rule appended, or deleted by handle: the chain then allows exactly what ztb's
    sets allow after the same change."""
    elements = nft.desired_elements(*b)
    keys = list(elements)
    assume(keys)
    newest = data.draw(st.sampled_from(keys))
    before = {k: t for k, t in elements.items() if k != newest}
    chain = GrantChain()
    handles = dict(zip(before, chain.apply(baseline.table_commands("wg0", before)), strict=True))
    [handles[newest]] = chain.apply([baseline.grant_rule(newest)])
    assert_chain_allows(chain, elements)
    gone = data.draw(st.sampled_from(keys))
    chain.apply([baseline.delete_rule(handles[gone])])
    assert_chain_allows(chain, {k: t for k, t in elements.items() if k != gone})


def test_golden_state_has_the_same_verdicts() -> None:
    elements = nft.desired_elements(golden_state(), REMAINING)
    assert elements
    assert_same_policy(elements)


@settings(max_examples=150, deadline=None)
@given(states())
def test_random_states_have_the_same_verdicts(b: tuple[DesiredState, dict[str, float]]) -> None:
    assert_same_policy(nft.desired_elements(*b))


def test_chain_keeps_session_order_and_ends_in_drop() -> None:
    elements = workload.elements(workload.home(5, {2: workload.probe(0, 8080)}))
    chain = GrantChain()
    chain.apply(baseline.table_commands("wg0", elements))
    sources = [expr[0]["match"]["right"] for _, expr in chain.rules]
    assert sources == [k.tunnel_ip for k in elements]
    assert sources[2] == str(workload.probe_tunnel_ip(0))
    assert chain.from_tunnel[-1] == [{"counter": None}, {"drop": None}]


def test_everything_but_the_grant_chain_is_ztbs_own_skeleton() -> None:
    grant_chains = (nft.CHAIN_FROM_TUNNEL, baseline.GRANT_RULES)

    def outside_grant_chain(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            c
            for c in commands
            if "set" not in c.get("add", {})
            and c.get("add", {}).get("rule", {}).get("chain") not in grant_chains
            and c.get("add", {}).get("chain", {}).get("name") != baseline.GRANT_RULES
            and c.get("flush", {}).get("chain", {}).get("name") not in grant_chains
        ]

    ours = outside_grant_chain(nft.table_commands("wg0"))
    theirs = outside_grant_chain(baseline.table_commands("wg0", {}))
    assert ours == theirs
    assert any("rule" in c.get("add", {}) for c in ours)
