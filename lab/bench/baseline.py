"""The usual approach, as the baseline to beat: one linear rule per grant.

This is what most WireGuard managers do: each grant becomes
``ip saddr T ip daddr D meta l4proto P th dport N accept`` in one chain, and everything
else is ztb's own skeleton, so both allow exactly the same tuples, check every packet
from the tunnel, and drop the rest. A change is made in one of two ways, both measured:

* **full reload**: the whole chain is flushed and refilled in one atomic libnftables JSON
  transaction (not one ``nft`` process per rule): what most managers do;
* **incremental** (``lab.bench.incremental``): a careful manager appends one rule and
  deletes one rule by the handle it kept; the packet path (a linear scan) is the same.

The grant rules live in a chain of their own (``grant_rules``), which ztb's
``from_tunnel`` chain jumps to before its final drop, so a new rule can be appended
without a position.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from netpolicy import nft
from netpolicy.nft import Command, ElementKey

GRANT_RULES = "grant_rules"
_GRANT_CHAIN = {"family": nft.FAMILY, "table": nft.TABLE, "chain": GRANT_RULES}


def _rule(*expr: dict[str, Any], chain: str = GRANT_RULES) -> Command:
    return {"add": {"rule": {"family": nft.FAMILY, "table": nft.TABLE, "chain": chain,
                             "expr": list(expr)}}}  # fmt: skip


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _grant_expr(key: ElementKey) -> list[dict[str, Any]]:
    ip = "ip" if key.family == 4 else "ip6"
    port: int | dict[str, list[int]] = (
        key.first if key.first == key.last else {"range": [key.first, key.last]}
    )
    return [
        _match({"payload": {"protocol": ip, "field": "saddr"}}, key.tunnel_ip),
        _match({"payload": {"protocol": ip, "field": "daddr"}}, key.device_ip),
        _match({"meta": {"key": "l4proto"}}, key.proto),
        _match({"payload": {"protocol": "th", "field": "dport"}}, port),
        {"accept": None},
    ]


def grant_rule(key: ElementKey) -> Command:
    """The linear rule that allows exactly what one ztb set element allows."""
    return _rule(*_grant_expr(key))


def delete_rule(handle: int) -> Command:
    """The incremental manager's remove: one rule, by the handle the kernel gave it."""
    return {"delete": {"rule": {**_GRANT_CHAIN, "handle": handle}}}


def reload_commands(keys: Iterable[ElementKey]) -> list[Command]:
    """Flush and refill the grant chain: one transaction."""
    chain = {"family": nft.FAMILY, "table": nft.TABLE, "name": GRANT_RULES}
    return [{"flush": {"chain": chain}}, *(grant_rule(key) for key in keys)]


def _is_set_or_lookup(command: Command) -> bool:
    added = command.get("add", {})
    return "set" in added or added.get("rule", {}).get("chain") == nft.CHAIN_FROM_TUNNEL


def table_commands(interface: str, keys: Iterable[ElementKey]) -> list[Command]:
    """ztb's skeleton without its sets and set lookups: ``from_tunnel`` jumps to the grant
    rules, then drops (ztb's default drop), as ztb's chain drops after its lookups."""
    skeleton = [c for c in nft.table_commands(interface) if not _is_set_or_lookup(c)]
    from_tunnel = [
        {"add": {"chain": {"family": nft.FAMILY, "table": nft.TABLE, "name": GRANT_RULES}}},
        _rule({"jump": {"target": GRANT_RULES}}, chain=nft.CHAIN_FROM_TUNNEL),
        _rule({"counter": None}, {"drop": None}, chain=nft.CHAIN_FROM_TUNNEL),
    ]
    return skeleton + from_tunnel + reload_commands(keys)
