"""The careful rule-per-grant manager: one rule appended or deleted per change, by handle.

This is the baseline's chain (``lab.bench.baseline``) kept the way a careful manager would
keep it: at start-up the whole table is loaded once and each grant's rule handle is read
back; afterwards a new grant is one rule appended to the grant chain and a removed grant
is one ``delete`` by the handle kept for it. Nothing is re-sent.

It is given its cheapest form. libnftables fills its whole rule cache (a listing of
every rule, ~0.8 s at 10,000 rules here) to insert at a position or to echo the handle of
a new rule, which is what e.g. firewalld's echo does; this manager avoids both: it
appends, and knows the new rule's handle because the kernel hands out a table's handles
in sequence (one more per object made) and it is the table's only writer. ``check``
compares its handles with the kernel's, outside any timed span. The kernel still rebuilds
the chain's rule blob on every commit, so the cost is not flat in N, and every packet
still scans the chain linearly.

It uses its own instance of the same libnftables binding as the agent's backend, with
handle output on (the agent's backend has no use for rule handles).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from netpolicy import nft
from netpolicy.nft import Command, ElementKey

from . import baseline


class ManagerError(RuntimeError):
    """nft refused a change, or the kernel's rules are not the ones the manager tracks."""


class IncrementalChain:
    """Grant rules in the baseline chain, with the handle of each one kept in memory."""

    def __init__(self) -> None:
        import nftables  # lazily: the binding loads a shared library

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        self._handles: dict[ElementKey, int] = {}
        self._next_handle = 0

    def _run(self, commands: list[Command]) -> Any:
        rc, output, error = self._nft.json_cmd(nft.script(commands))
        if rc != 0:
            raise ManagerError(f"nft: {str(error).strip()}")
        return output

    def _listing(self) -> list[dict[str, Any]]:
        listed = self._run([{"list": {"table": {"family": nft.FAMILY, "name": nft.TABLE}}}])
        return [item for item in listed.get("nftables", []) if "metainfo" not in item]

    def _rule_handles(self) -> list[int]:
        rules = (item["rule"] for item in self._listing() if "rule" in item)
        return [int(rule["handle"]) for rule in rules if rule["chain"] == baseline.GRANT_RULES]

    def load(self, interface: str, keys: Iterable[ElementKey]) -> None:
        """Start-up, in a fresh namespace: the whole table in one transaction, then every
        handle read back once (and where the kernel's handle sequence stands)."""
        ordered = list(keys)
        self._run(baseline.table_commands(interface, ordered))
        handles = self._rule_handles()
        if len(handles) != len(ordered):
            raise ManagerError(f"chain holds {len(handles)} rules, expected {len(ordered)}")
        self._handles = dict(zip(ordered, handles, strict=True))
        made = [int(obj["handle"]) for item in self._listing() for obj in item.values()]
        self._next_handle = max(made) + 1

    def add(self, key: ElementKey) -> None:
        """One rule appended; its handle is the next of the table's sequence."""
        if key in self._handles:
            raise ManagerError(f"{key} already has a rule")
        self._run([baseline.grant_rule(key)])
        self._handles[key] = self._next_handle
        self._next_handle += 1

    def remove(self, key: ElementKey) -> None:
        """One rule, by its kept handle."""
        self._run([baseline.delete_rule(self._handles.pop(key))])

    def check(self) -> None:
        """Raise unless the kernel's grant rules are exactly the tracked ones, in order."""
        tracked = sorted(self._handles.values())
        if (kernel := self._rule_handles()) != tracked:
            raise ManagerError(f"kernel rule handles {kernel[:5]}... differ from {tracked[:5]}...")
