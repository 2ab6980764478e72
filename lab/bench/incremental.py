"""The careful rule-per-grant manager: one rule added or deleted per change, by handle.

This is the baseline's chain (``lab.bench.baseline``) kept the way a careful manager
would keep it: at start-up the whole chain is loaded once and each grant's rule handle is
read back; afterwards a new grant is one ``insert`` before the chain's final drop rule
(the kernel echoes the new rule's handle) and a removed grant is one ``delete`` by the
handle kept for it. Nothing is re-sent. The kernel still walks the rule list to find the
position and rebuilds the chain's rule blob on every commit, so the cost is not flat in N,
and every packet still scans the chain linearly.

It uses its own instance of the same libnftables binding as the agent's backend, with
echo and handle output on (the agent's backend has no use for rule handles).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from netpolicy import nft
from netpolicy.nft import Command, ElementKey

from . import baseline


class ManagerError(RuntimeError):
    """nft refused a change, or its answer did not name the rule it made."""


class IncrementalChain:
    """Grant rules in the baseline chain, with the handle of each one kept in memory."""

    def __init__(self) -> None:
        import nftables  # lazily: the binding loads a shared library

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_echo_output(True)
        self._nft.set_handle_output(True)
        self._handles: dict[ElementKey, int] = {}
        self._drop_handle = 0

    def _run(self, commands: list[Command]) -> Any:
        rc, output, error = self._nft.json_cmd(nft.script(commands))
        if rc != 0:
            raise ManagerError(f"nft: {str(error).strip()}")
        return output

    def load(self, interface: str, keys: Iterable[ElementKey]) -> None:
        """Start-up: the whole table in one transaction, then every handle read back once."""
        ordered = list(keys)
        self._run(baseline.table_commands(interface, ordered))
        chain = {"family": nft.FAMILY, "table": nft.TABLE, "name": nft.CHAIN_FROM_TUNNEL}
        listing = self._run([{"list": {"chain": chain}}])
        rules = [item["rule"] for item in listing.get("nftables", []) if "rule" in item]
        if len(rules) != len(ordered) + 1:
            raise ManagerError(f"chain holds {len(rules)} rules, expected {len(ordered) + 1}")
        grants = zip(ordered, rules[:-1], strict=True)
        self._handles = {key: int(rule["handle"]) for key, rule in grants}
        self._drop_handle = int(rules[-1]["handle"])

    def add(self, key: ElementKey) -> None:
        """One rule, just before the final drop; the echoed handle is kept for the delete."""
        if key in self._handles:
            raise ManagerError(f"{key} already has a rule")
        echoed = self._run([baseline.insert_before(self._drop_handle, key)])
        self._handles[key] = _echoed_handle(echoed)

    def remove(self, key: ElementKey) -> None:
        """One rule, by its kept handle."""
        self._run([baseline.delete_rule(self._handles.pop(key))])


def _echoed_handle(output: Any) -> int:
    for item in output.get("nftables", []) if isinstance(output, dict) else []:
        rule = item.get("insert", {}).get("rule")
        if rule is not None and "handle" in rule:
            return int(rule["handle"])
    raise ManagerError(f"nft did not echo the new rule's handle: {output!r:.200}")
