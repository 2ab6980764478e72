"""Compile desired state into libnftables JSON for ``table inet ztb``.

The table holds grant sets keyed ``tunnel ip . device ip . l4proto . port`` with
per-element timeouts and counters: single ports live in hash sets (``grants4``/``grants6``),
port ranges in interval sets (``ranges4``/``ranges6``). The split matters: adding to or
deleting from an interval set costs time that grows with the set (measured: 64 ms to remove
one session at 10,000 grants vs 0.09 ms in a hash set), and most grants are single ports.

Every packet from the tunnel is looked up (not just new ones), so removing an element cuts
a flow at once, and the kernel drops it at expiry even if the agent is dead.

libnftables JSON takes element timeouts only as whole seconds (in nft 1.0.6 a string such
as ``"2500ms"`` is silently ignored and the element never expires). Timeouts are therefore
rounded *down*: access may end up to one second early, never late.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .grants import PROTOCOLS, Proto
from .model import DesiredState

FAMILY = "inet"
TABLE = "ztb"
SET4 = "grants4"
SET6 = "grants6"
RANGES4 = "ranges4"
RANGES6 = "ranges6"
GRANT_SETS = (SET4, SET6, RANGES4, RANGES6)
CHAIN_FORWARD = "filter_forward"
CHAIN_INPUT = "filter_input"
CHAIN_OUTPUT = "filter_output"
CHAIN_FROM_TUNNEL = "from_tunnel"
CHAIN_TO_TUNNEL = "to_tunnel"
# A kernel lifetime within this many seconds of the desired one is left alone: both are
# whole seconds, so a smaller difference is rounding, not a change.
LIFETIME_SLACK_S = 1

Command = dict[str, Any]


@dataclass(frozen=True, slots=True, order=True)
class ElementKey:
    """One set element: ``tunnel . device . proto . first-last`` in one address family."""

    family: int
    tunnel_ip: str
    device_ip: str
    proto: Proto
    first: int
    last: int

    @property
    def set_name(self) -> str:
        if self.first == self.last:
            return SET4 if self.family == 4 else SET6
        return RANGES4 if self.family == 4 else RANGES6

    def value(self) -> dict[str, Any]:
        port: int | dict[str, list[int]] = (
            self.first if self.first == self.last else {"range": [self.first, self.last]}
        )
        return {"concat": [self.tunnel_ip, self.device_ip, self.proto, port]}


@dataclass(frozen=True, slots=True)
class KernelElement:
    """What the kernel reports about one element: seconds left and its counters."""

    expires: int
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class ElementDiff:
    add: Mapping[ElementKey, int]
    delete: frozenset[ElementKey]

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)


def timeout_seconds(remaining: float) -> int:
    """Whole seconds for the kernel, rounded down so the agent never extends a lifetime."""
    return max(0, math.floor(remaining))


def desired_elements(state: DesiredState, remaining: Mapping[str, float]) -> dict[ElementKey, int]:
    """Elements and their timeouts; ``remaining`` is seconds of life left per session id.

    A session missing from ``remaining`` or with less than one second left compiles to
    nothing: the kernel cannot hold a shorter timeout, and zero means "never expires".
    """
    elements: dict[ElementKey, int] = {}
    for session in state.sessions:
        timeout = timeout_seconds(remaining.get(session.session_id, 0.0))
        if timeout < 1:
            continue
        for grant in session.grants:
            tunnel = session.tunnel_ip if grant.family == 4 else session.tunnel_ip6
            key = ElementKey(
                grant.family,
                str(tunnel),
                str(grant.device_ip),
                grant.proto,
                grant.ports.first,
                grant.ports.last,
            )
            elements[key] = timeout
    return elements


def diff_elements(
    current: Mapping[ElementKey, KernelElement], desired: Mapping[ElementKey, int]
) -> ElementDiff:
    """What to delete and add so the kernel holds exactly ``desired``.

    An element whose lifetime changed by more than the rounding slack is deleted and added
    again in the same transaction: nftables cannot change a timeout in place.
    """
    delete = {key for key in current if key not in desired}
    add: dict[ElementKey, int] = {}
    for key, timeout in desired.items():
        have = current.get(key)
        if have is None:
            add[key] = timeout
        elif abs(have.expires - timeout) > LIFETIME_SLACK_S:
            delete.add(key)
            add[key] = timeout
    return ElementDiff(add=add, delete=frozenset(delete))


def _by_set(keys: Iterable[ElementKey]) -> dict[str, list[ElementKey]]:
    grouped: dict[str, list[ElementKey]] = {}
    for key in sorted(keys):
        grouped.setdefault(key.set_name, []).append(key)
    return grouped


def diff_commands(diff: ElementDiff) -> list[Command]:
    """Deletes first, then adds: a replaced element gets its new timeout in one transaction."""
    commands: list[Command] = []
    for set_name, keys in _by_set(diff.delete).items():
        elems = [key.value() for key in keys]
        commands.append({"delete": {"element": _element_target(set_name, elems)}})
    for set_name, keys in _by_set(diff.add).items():
        elems = [{"elem": {"val": key.value(), "timeout": diff.add[key]}} for key in keys]
        commands.append({"add": {"element": _element_target(set_name, elems)}})
    return commands


def _element_target(set_name: str, elems: list[Any]) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, "name": set_name, "elem": elems}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _grant_lookup(ip_proto: str, set_name: str) -> dict[str, Any]:
    key = {
        "concat": [
            {"payload": {"protocol": ip_proto, "field": "saddr"}},
            {"payload": {"protocol": ip_proto, "field": "daddr"}},
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}},
        ]
    }
    return _match(key, f"@{set_name}")


def _rule(chain: str, *expr: dict[str, Any]) -> Command:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}}}


def _base_chain(name: str, hook: str) -> Command:
    return {
        "add": {
            "chain": {
                "family": FAMILY,
                "table": TABLE,
                "name": name,
                "type": "filter",
                "hook": hook,
                "prio": 0,
                "policy": "accept",
            }
        }
    }


def _regular_chain(name: str) -> Command:
    return {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}}


def _grant_set(name: str, addr_type: str, *, ranges: bool) -> Command:
    return {
        "add": {
            "set": {
                "family": FAMILY,
                "table": TABLE,
                "name": name,
                "type": [addr_type, addr_type, "inet_proto", "inet_service"],
                "flags": ["interval", "timeout"] if ranges else ["timeout"],
                "stmt": [{"counter": None}],
            }
        }
    }


def table_commands(interface: str) -> list[Command]:
    """Create (or re-assert) the table, keeping set elements and rebuilding every chain.

    ``add`` of an existing table, set or chain is a no-op, and each chain is flushed before
    its rules are added, so running this twice yields the same ruleset.
    """
    on_tunnel_in = _match({"meta": {"key": "iifname"}}, interface)
    on_tunnel_out = _match({"meta": {"key": "oifname"}}, interface)
    established = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    chains = [
        _base_chain(CHAIN_FORWARD, "forward"),
        _base_chain(CHAIN_INPUT, "input"),
        _base_chain(CHAIN_OUTPUT, "output"),
        _regular_chain(CHAIN_FROM_TUNNEL),
        _regular_chain(CHAIN_TO_TUNNEL),
    ]
    names = [CHAIN_FORWARD, CHAIN_INPUT, CHAIN_OUTPUT, CHAIN_FROM_TUNNEL, CHAIN_TO_TUNNEL]
    flushes: list[Command] = [
        {"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}} for name in names
    ]
    rules = [
        # Everything that enters from the tunnel is judged by from_tunnel, every packet.
        _rule(CHAIN_FORWARD, on_tunnel_in, {"jump": {"target": CHAIN_FROM_TUNNEL}}),
        # Towards the tunnel only replies pass: LAN devices cannot open connections.
        _rule(CHAIN_FORWARD, on_tunnel_out, {"jump": {"target": CHAIN_TO_TUNNEL}}),
        _rule(CHAIN_FROM_TUNNEL, _grant_lookup("ip", SET4), {"accept": None}),
        _rule(CHAIN_FROM_TUNNEL, _grant_lookup("ip", RANGES4), {"accept": None}),
        _rule(CHAIN_FROM_TUNNEL, _grant_lookup("ip6", SET6), {"accept": None}),
        _rule(CHAIN_FROM_TUNNEL, _grant_lookup("ip6", RANGES6), {"accept": None}),
        _rule(CHAIN_FROM_TUNNEL, {"counter": None}, {"drop": None}),
        _rule(CHAIN_TO_TUNNEL, established, {"accept": None}),
        _rule(CHAIN_TO_TUNNEL, {"counter": None}, {"drop": None}),
        # The router itself is never reachable through the tunnel (no SSH, LuCI, DNS).
        _rule(CHAIN_INPUT, on_tunnel_in, {"counter": None}, {"drop": None}),
        # Nor does the router open connections into it.
        _rule(CHAIN_OUTPUT, on_tunnel_out, established, {"accept": None}),
        _rule(CHAIN_OUTPUT, on_tunnel_out, {"counter": None}, {"drop": None}),
    ]
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        _grant_set(SET4, "ipv4_addr", ranges=False),
        _grant_set(RANGES4, "ipv4_addr", ranges=True),
        _grant_set(SET6, "ipv6_addr", ranges=False),
        _grant_set(RANGES6, "ipv6_addr", ranges=True),
        *chains,
        *flushes,
        *rules,
    ]


def delete_table_command() -> Command:
    return {"delete": {"table": {"family": FAMILY, "name": TABLE}}}


def script(commands: list[Command]) -> dict[str, Any]:
    """Wrap commands as one libnftables JSON document: one document, one transaction."""
    return {"nftables": commands}


def parse_set_listing(listing: Mapping[str, Any]) -> dict[ElementKey, KernelElement]:
    """Read the elements of ``nft -j list set`` / ``list table`` output (any of our sets)."""
    elements: dict[ElementKey, KernelElement] = {}
    for item in listing.get("nftables", []):
        set_obj = item.get("set") if isinstance(item, dict) else None
        if not set_obj or set_obj.get("table") != TABLE or set_obj.get("name") not in GRANT_SETS:
            continue
        family = 4 if set_obj["name"] in (SET4, RANGES4) else 6
        for raw in set_obj.get("elem", []):
            elem = raw.get("elem", raw) if isinstance(raw, dict) else raw
            value = elem.get("val", elem) if isinstance(elem, dict) else elem
            key = _parse_key(family, value)
            if key is None:
                continue
            counter = elem.get("counter", {}) if isinstance(elem, dict) else {}
            expires = elem.get("expires", 0) if isinstance(elem, dict) else 0
            elements[key] = KernelElement(
                expires=int(expires),
                packets=int(counter.get("packets", 0)),
                bytes=int(counter.get("bytes", 0)),
            )
    return elements


def _parse_key(family: int, value: Any) -> ElementKey | None:
    if not isinstance(value, dict) or "concat" not in value:
        return None
    tunnel, device, proto, port = value["concat"]
    if proto not in PROTOCOLS:
        return None
    if isinstance(port, dict):
        first, last = port["range"]
    else:
        first = last = port
    return ElementKey(family, str(tunnel), str(device), proto, int(first), int(last))
