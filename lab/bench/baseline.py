"""The usual approach, as the baseline to beat: one linear rule per grant.

This is what most WireGuard managers do: each grant becomes
``ip saddr T ip daddr D meta l4proto P th dport N accept`` in one chain, and any change
rebuilds that chain. It is given its best realistic form: the whole chain is flushed and
refilled in one atomic libnftables JSON transaction (not one ``nft`` process per rule),
and everything else is ztb's own skeleton, so both allow exactly the same tuples, check
every packet from the tunnel, and drop the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from netpolicy import nft
from netpolicy.nft import Command, ElementKey


def _rule(*expr: dict[str, Any]) -> Command:
    rule = {"family": nft.FAMILY, "table": nft.TABLE, "chain": nft.CHAIN_FROM_TUNNEL}
    return {"add": {"rule": {**rule, "expr": list(expr)}}}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def grant_rule(key: ElementKey) -> Command:
    """The linear rule that allows exactly what one ztb set element allows."""
    ip = "ip" if key.family == 4 else "ip6"
    port: int | dict[str, list[int]] = (
        key.first if key.first == key.last else {"range": [key.first, key.last]}
    )
    return _rule(
        _match({"payload": {"protocol": ip, "field": "saddr"}}, key.tunnel_ip),
        _match({"payload": {"protocol": ip, "field": "daddr"}}, key.device_ip),
        _match({"meta": {"key": "l4proto"}}, key.proto),
        _match({"payload": {"protocol": "th", "field": "dport"}}, port),
        {"accept": None},
    )


def reload_commands(keys: Iterable[ElementKey]) -> list[Command]:
    """Flush and refill the grant chain, ending in ztb's default drop: one transaction."""
    chain = {"family": nft.FAMILY, "table": nft.TABLE, "name": nft.CHAIN_FROM_TUNNEL}
    return [
        {"flush": {"chain": chain}},
        *(grant_rule(key) for key in keys),
        _rule({"counter": None}, {"drop": None}),
    ]


def _is_set_or_lookup(command: Command) -> bool:
    added = command.get("add", {})
    return "set" in added or added.get("rule", {}).get("chain") == nft.CHAIN_FROM_TUNNEL


def table_commands(interface: str, keys: Iterable[ElementKey]) -> list[Command]:
    """ztb's skeleton without its sets and set lookups, with one rule per grant instead."""
    skeleton = [c for c in nft.table_commands(interface) if not _is_set_or_lookup(c)]
    return skeleton + reload_commands(keys)
