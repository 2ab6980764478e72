"""Forwarding of learned paths in the kernel: stateless NAT in the relay's own nft table.

Once the relay knows both ends of a path, each direction becomes four map elements: a
transport-data datagram's ``source address . source port . relay port`` picks a mark; in
prerouting the mark picks the new destination (the other end) and the packet skips conntrack
(``notrack``: no state per flow, and no clash with the flows the relay's sockets saw); in
postrouting the mark picks the new source (the relay's other port of the path). The
kernel forwards it like a router would, so the data path costs no system call and no
Python. A meter per mark enforces the per-path rate limits. Handshake messages are left
to the relay process: they are what moves an end, and an answer to a technician's new
address must not be sent to its old one.

Every element carries the path's remaining lifetime as its timeout, so the kernel stops
forwarding at the session's deadline even if the relay process is gone. The relay owns
only ``table ip ztb_relay``; it never touches another table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from netpolicy.relay import RelayPath

from .path import Address, Limits

TABLE = "ztb_relay"
MARK_TAG = 0x5A000000
MARK_MASK = 0xFF000000
MAX_MARKS = 1 << 23  # two per path
TRANSPORT_TYPE = 4  # the first payload byte of WireGuard data; handshakes stay in Python


class KernelError(RuntimeError):
    """nft refused a change to the relay's table."""


def table_script(address: str, limits: Limits) -> str:
    """The table, made fresh: whatever an earlier relay process left is replaced."""
    tag = f"meta mark & {MARK_MASK:#x} == {MARK_TAG:#x}"
    burst = max(limits.packets_per_s // 20, 64)
    byte_burst = max(limits.bytes_per_s // 20, 65536)
    return f"""
table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
    counter rate_drops {{ }}
    counter forwarded {{ }}
    map to_mark {{ type ipv4_addr . inet_service . inet_service : mark; flags timeout; counter; }}
    map mark_daddr {{ type mark : ipv4_addr; flags timeout; }}
    map mark_dport {{ type mark : inet_service; flags timeout; }}
    map mark_sport {{ type mark : inet_service; flags timeout; }}
    set over_packets {{ type mark; flags dynamic,timeout; timeout 10s; }}
    set over_bytes {{ type mark; flags dynamic,timeout; timeout 10s; }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        ip daddr {address} meta l4proto udp @th,64,8 {TRANSPORT_TYPE} meta mark set ip saddr . udp sport . udp dport map @to_mark notrack ip daddr set meta mark map @mark_daddr udp dport set meta mark map @mark_dport
    }}
    chain forward {{
        type filter hook forward priority filter - 1; policy accept;
        {tag} update @over_packets {{ meta mark limit rate over {limits.packets_per_s}/second burst {burst} packets }} counter name rate_drops drop
        {tag} update @over_bytes {{ meta mark limit rate over {limits.bytes_per_s} bytes/second burst {byte_burst} bytes }} counter name rate_drops drop
        {tag} counter name forwarded
    }}
    chain postrouting {{
        type filter hook postrouting priority srcnat; policy accept;
        {tag} ip saddr set {address} udp sport set meta mark map @mark_sport
    }}
}}
"""  # noqa: E501, S608 (nft, not SQL)


@dataclass(frozen=True, slots=True)
class _Installed:
    marks: tuple[int, int]
    keys: tuple[str, str]


@dataclass(slots=True)
class _Change:
    """nft lines for one path, and whether missing elements are fine (a delete may meet
    elements the kernel already expired)."""

    lines: list[str]
    tolerant: bool
    done: asyncio.Future[None]


class KernelPaths:
    """The relay's nft table; ``install``/``remove`` are the ``forwarder.Offload`` calls.

    Changes queue up and go to ``nft`` as one batch (one process, one transaction) when
    the previous batch is done: a relay that learns 1,000 paths at once (after a restart,
    say) spends a few ``nft`` runs on them, not 1,000.
    """

    def __init__(self, address: str, limits: Limits, nft: str = "nft") -> None:
        self.address = address
        self.limits = limits
        self.nft = nft
        self._installed: dict[str, _Installed] = {}
        self._free: list[int] = []  # marks of removed paths, used again first
        self._next_mark = 0
        self._queue: list[_Change] = []
        self._flushing: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        await self._run(table_script(self.address, self.limits))

    async def teardown(self) -> None:
        await self._run(f"table ip {TABLE}\ndelete table ip {TABLE}\n")
        self._installed.clear()

    async def install(
        self, spec: RelayPath, technician: Address, home: Address, ttl: float
    ) -> None:
        timeout = int(ttl)  # whole seconds, rounded down: never forwards past the deadline
        if timeout < 1:
            return
        removal = self._forget(spec.path_id)
        first = self._new_mark()
        marks = (MARK_TAG | first, MARK_TAG | (first + 1))
        directions = (
            (technician, spec.technician_port, home, spec.home_port, marks[0]),
            (home, spec.home_port, technician, spec.technician_port, marks[1]),
        )
        lines, keys = [], []
        for (src_ip, src_port), arrive, (dst_ip, dst_port), leave, mark in directions:
            key = f"{src_ip} . {src_port} . {arrive}"
            keys.append(key)
            t = f"timeout {timeout}s"
            lines += [
                f"add element ip {TABLE} mark_daddr {{ {mark:#x} {t} : {dst_ip} }}",
                f"add element ip {TABLE} mark_dport {{ {mark:#x} {t} : {dst_port} }}",
                f"add element ip {TABLE} mark_sport {{ {mark:#x} {t} : {leave} }}",
                f"add element ip {TABLE} to_mark {{ {key} {t} : {mark:#x} }}",
            ]
        self._installed[spec.path_id] = _Installed(marks, (keys[0], keys[1]))
        if removal is not None:
            await removal
        await self._submit(lines, tolerant=False)

    async def remove(self, path_id: str) -> None:
        removal = self._forget(path_id)
        if removal is not None:
            await removal

    def _new_mark(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next_mark >= MAX_MARKS:
            raise KernelError("no free marks: too many paths in the kernel")
        self._next_mark += 2
        return self._next_mark - 2

    def _forget(self, path_id: str) -> asyncio.Future[None] | None:
        """Queue the deletion of a path's elements (lookups first, so no packet meets half
        a path); its marks are free again at once."""
        pair = self._installed.pop(path_id, None)
        if pair is None:
            return None
        lines = [f"delete element ip {TABLE} to_mark {{ {key} }}" for key in pair.keys]
        for mark in pair.marks:
            lines += [
                f"delete element ip {TABLE} {name} {{ {mark:#x} }}"
                for name in ("mark_daddr", "mark_dport", "mark_sport")
            ]
        self._free.append(pair.marks[0] & ~MARK_MASK)
        return self._enqueue(lines, tolerant=True)

    async def _submit(self, lines: list[str], tolerant: bool) -> None:
        await self._enqueue(lines, tolerant)

    def _enqueue(self, lines: list[str], tolerant: bool) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        change = _Change(lines, tolerant, loop.create_future())
        self._queue.append(change)
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return change.done

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._run("".join(line + "\n" for c in batch for line in c.lines))
                    for change in batch:
                        change.done.set_result(None)
                except KernelError:
                    for change in batch:  # one bad change must not sink the others
                        await self._apply_alone(change)
        finally:
            self._flushing = None

    async def _apply_alone(self, change: _Change) -> None:
        try:
            await self._run("".join(line + "\n" for line in change.lines))
        except KernelError as exc:
            if not change.tolerant:
                change.done.set_exception(exc)
                return
            for line in change.lines:
                with contextlib.suppress(KernelError):
                    await self._run(line + "\n")
        change.done.set_result(None)

    async def counters(self) -> dict[str, Any]:
        """Kernel-forwarded packets and bytes per path, and the kernel's rate drops."""
        listing = json.loads(await self._run("", argv=("-j", "list", "table", "ip", TABLE)))
        by_key: dict[str, tuple[int, int]] = {}
        named: dict[str, int] = {}
        for item in listing.get("nftables", []):
            if "counter" in item:
                named[item["counter"]["name"]] = int(item["counter"].get("packets", 0))
            if item.get("map", {}).get("name") == "to_mark":
                for element in item["map"].get("elem", []):
                    key, _ = element
                    elem = key.get("elem", {})
                    concat = elem.get("val", {}).get("concat", [])
                    counter = elem.get("counter", {})
                    text = " . ".join(str(part) for part in concat)
                    by_key[text] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
        paths = {
            path_id: tuple(sum(by_key.get(k, (0, 0))[i] for k in pair.keys) for i in (0, 1))
            for path_id, pair in self._installed.items()
        }
        return {"paths": paths, "rate_drops": named.get("rate_drops", 0)}

    async def _run(self, script: str, argv: tuple[str, ...] = ("-f", "-")) -> str:
        """``nft`` with ``script`` on stdin (a batch is one transaction); returns stdout."""
        proc = await asyncio.create_subprocess_exec(
            self.nft,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(script.encode())
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip().splitlines()
            raise KernelError(f"nft failed: {detail[0] if detail else proc.returncode}")
        return out.decode()
