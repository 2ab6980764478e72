"""In-memory WireGuard and nftables backends for unit tests of reconcile logic.

They keep the behaviour reconcile depends on: nft documents are atomic, deleting a
missing element fails the whole document, elements expire on an injected clock, reading
elements skips the ones gone, and ``state_text`` prints the resulting "kernel" as sorted
lines for golden comparisons. ``count`` stands in for traffic hitting an element.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from agent.nftables.backend import Listing, NftError
from agent.wireguard.backend import InterfaceConfig, PeerConfig, PeerState, canonical_ips
from netpolicy.nft import FAMILY, TABLE, Command, ElementKey, KernelElement


class FakeWireGuard:
    kind = "fake"

    def __init__(self, name: str = "wgfake") -> None:
        self.name = name
        self.interface: dict[str, Any] | None = None
        self.peers: dict[str, PeerState] = {}
        self.calls: list[str] = []

    def ensure_interface(self, config: InterfaceConfig) -> None:
        self.calls.append("ensure_interface")
        self.interface = {
            "port": config.listen_port,
            "addresses": list(config.addresses),
            "routes": list(config.routes),
        }

    def list_peers(self) -> list[PeerState]:
        return [self.peers[key] for key in sorted(self.peers)]

    def set_peer(self, peer: PeerConfig) -> None:
        self.calls.append(f"set_peer {peer.public_key}")
        old = self.peers.get(peer.public_key)
        self.peers[peer.public_key] = PeerState(
            peer.public_key,
            canonical_ips(peer.allowed_ips),
            peer.preshared_key,
            peer.keepalive_s,
            peer.endpoint or (old.endpoint if old else None),
        )

    def remove_peer(self, public_key: str) -> None:
        self.calls.append(f"remove_peer {public_key}")
        self.peers.pop(public_key, None)

    def delete_interface(self) -> bool:
        existed = self.interface is not None
        self.interface, self.peers = None, {}
        return existed


@dataclass
class _Element:
    value: Any
    timeout: int
    expires_at: float
    packets: int = 0
    bytes: int = 0


@dataclass
class _Table:
    sets: dict[str, dict[str, _Element]] = field(default_factory=dict)
    rules: dict[str, list[Any]] = field(default_factory=dict)


def _element_id(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class FakeNftables:
    kind = "fake"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.table: _Table | None = None
        self.transactions: list[list[Command]] = []
        self.fail_next: str | None = None
        self.reads: list[list[ElementKey]] = []
        self.fail_reads: Exception | None = None

    def _expire(self) -> None:
        if self.table is None:
            return
        now = self._clock()
        for elements in self.table.sets.values():
            for key in [k for k, el in elements.items() if el.expires_at <= now]:
                del elements[key]

    def run(self, commands: list[Command]) -> None:
        if not commands:
            return
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise NftError(f"nft: {message}")
        self._expire()
        staged = copy.deepcopy(self.table)
        for command in commands:
            staged = self._one(staged, command)
        self.table = staged  # all or nothing, like one nft document
        self.transactions.append(commands)

    def _one(self, table: _Table | None, command: Command) -> _Table | None:
        ((verb, body),) = command.items()
        ((kind, obj),) = body.items()
        if kind == "table":
            return (table or _Table()) if verb == "add" else None
        if table is None:
            raise NftError("nft: Error: No such file or directory (no table)")
        if kind == "set":
            table.sets.setdefault(obj["name"], {})
        elif kind == "chain":
            if verb == "flush":
                table.rules[obj["name"]] = []
            else:
                table.rules.setdefault(obj["name"], [])
        elif kind == "rule":
            table.rules[obj["chain"]].append(obj["expr"])
        elif kind == "element":
            self._element(table, verb, obj)
        else:
            raise NftError(f"nft: fake cannot {verb} {kind}")
        return table

    def _element(self, table: _Table, verb: str, obj: dict[str, Any]) -> None:
        elements = table.sets.get(obj["name"])
        if elements is None:
            raise NftError(f"nft: Error: No such file or directory (set {obj['name']})")
        for item in obj["elem"]:
            if verb == "add":
                value, timeout = item["elem"]["val"], int(item["elem"]["timeout"])
                expires_at = self._clock() + timeout
                elements.setdefault(_element_id(value), _Element(value, timeout, expires_at))
            elif elements.pop(_element_id(item), None) is None:
                raise NftError("nft: Error: Could not process rule: No such file or directory")

    def _find(self, key: ElementKey) -> _Element | None:
        elements = self.table.sets.get(key.set_name, {}) if self.table else {}
        return elements.get(_element_id(key.value()))

    def count(self, key: ElementKey, packets: int, octets: int) -> None:
        """Traffic matched ``key``: its counters grow, as the kernel's would."""
        self._expire()
        element = self._find(key)
        assert element is not None, f"no element {key}"
        element.packets += packets
        element.bytes += octets

    def read_elements(self, keys: Collection[ElementKey]) -> dict[ElementKey, KernelElement]:
        self.reads.append(sorted(keys))
        if self.fail_reads is not None:
            raise self.fail_reads
        self._expire()
        now, found = self._clock(), {}
        for key in keys:
            element = self._find(key)
            if element is not None:
                expires = math.floor(element.expires_at - now)
                found[key] = KernelElement(expires, element.packets, element.bytes)
        return found

    def list_table(self) -> Listing:
        self._expire()
        if self.table is None:
            return {"nftables": []}
        now = self._clock()
        items: list[Any] = [{"table": {"family": FAMILY, "name": TABLE}}]
        for name, elements in sorted(self.table.sets.items()):
            elem = [
                {
                    "elem": {
                        "val": el.value,
                        "timeout": el.timeout,
                        "expires": math.floor(el.expires_at - now),
                        "counter": {"packets": el.packets, "bytes": el.bytes},
                    }
                }
                for _, el in sorted(elements.items())
            ]
            items.append({"set": {"family": FAMILY, "table": TABLE, "name": name, "elem": elem}})
        return {"nftables": items}

    def state_text(self) -> str:
        """The elements as ``set tunnel . device . proto . port timeout`` lines."""
        self._expire()
        if self.table is None:
            return "(no table)"
        lines = []
        for name, elements in sorted(self.table.sets.items()):
            for el in elements.values():
                concat = el.value["concat"]
                parts = [json.dumps(p) if isinstance(p, dict) else str(p) for p in concat]
                lines.append(f"{name} {' . '.join(parts)} timeout {el.timeout}")
        return "\n".join(sorted(lines))
