"""The relay's event loop: two UDP sockets per path, a deadline per path, kernel hand-off.

Every datagram that reaches a socket goes through ``PathState.route``. Once both ends of
a path are pinned, the path is handed to the kernel (``kernel.KernelPaths``): from then on
its packets are rewritten and forwarded by nftables without waking this process, and
only datagrams from other sources (junk, an end that moved) still arrive here. The
sockets stay bound for the path's whole life, so those still have a place to land.

``apply(state)`` is idempotent: new paths open, kept paths keep their learned ends (only
their deadline follows the document), paths absent from the document close at once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from netpolicy.relay import RelayPath, RelayState

from .path import Address, Counters, Limits, PathState, Side

RECEIVE_BUFFER = 1 << 20


class Offload(Protocol):
    """Forwarding in the kernel for paths whose two ends are known."""

    async def install(
        self, spec: RelayPath, technician: Address, home: Address, ttl: float
    ) -> None:
        """Forward ``spec``'s two directions between these ends for ``ttl`` seconds."""

    async def remove(self, path_id: str) -> None:
        """Stop forwarding ``path_id`` in the kernel (nothing happens if it was not there)."""


@dataclass(slots=True)
class LivePath:
    """One open path: its decisions, its two sockets and its deadline timer."""

    state: PathState
    transports: dict[Side, asyncio.DatagramTransport] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    offloaded: int = -1  # the PathState generation the kernel holds; -1: none
    offload_task: asyncio.Task[None] | None = None


class _EndProtocol(asyncio.DatagramProtocol):
    """One of a path's two sockets: routes what it receives out of the other one."""

    def __init__(self, relay: Relay, live: LivePath, side: Side) -> None:
        self.relay = relay
        self.live = live
        self.side = side

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        live = self.live
        src = (str(addr[0]), int(addr[1]))
        dst = live.state.route(self.side, src, data, self.relay.clock())
        if dst is None:
            return
        live.transports[self.side.other].sendto(data, dst)
        if live.state.generation != live.offloaded:
            self.relay.offload_when_ready(live)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (an end went away) are normal on UDP; the path just waits."""
        self.relay.socket_errors += 1


class Relay:
    """Every live path of one relay process."""

    def __init__(
        self,
        host: str,
        limits: Limits | None = None,
        offload: Offload | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.limits = limits or Limits()
        self.offload = offload
        self.clock = clock
        self.paths: dict[str, LivePath] = {}
        self.revision = -1
        self.socket_errors = 0
        self.closed_counters = Counters()  # what paths that are gone forwarded and dropped
        self._closing: set[asyncio.Task[None]] = set()

    async def apply(self, state: RelayState) -> None:
        """Make the open paths exactly ``state.paths``."""
        wanted = {path.path_id: path for path in state.paths}
        for path_id in [p for p in self.paths if p not in wanted]:
            await self.close_path(path_id)
        for spec in state.paths:
            live = self.paths.get(spec.path_id)
            if live is not None and live.state.spec.same_path(spec):
                self._renew(live, spec)
                continue
            if live is not None:
                await self.close_path(spec.path_id)
            if spec.expires_in > 0:
                await self._open(spec)
        self.revision = state.revision

    async def _open(self, spec: RelayPath) -> None:
        loop = asyncio.get_running_loop()
        live = LivePath(PathState(spec, self.clock(), self.limits))
        try:
            ends = ((Side.TECHNICIAN, spec.technician_port), (Side.HOME, spec.home_port))
            for side, port in ends:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda side=side: _EndProtocol(self, live, side),  # type: ignore[misc]
                    sock=_bound_socket(self.host, port),
                )
                live.transports[side] = transport
        except OSError:
            for transport in live.transports.values():
                transport.close()
            raise
        self.paths[spec.path_id] = live
        live.timer = loop.call_later(spec.expires_in, self._expire, spec.path_id)

    def _renew(self, live: LivePath, spec: RelayPath) -> None:
        live.state.renew(spec, self.clock())
        if live.timer is not None:
            live.timer.cancel()
        loop = asyncio.get_running_loop()
        live.timer = loop.call_later(spec.expires_in, self._expire, spec.path_id)
        live.offloaded = -1  # the kernel's copy carries the old lifetime
        self.offload_when_ready(live)

    def _expire(self, path_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.close_path(path_id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_path(self, path_id: str) -> None:
        """Kernel forwarding first, then the sockets: nothing of the path is left."""
        live = self.paths.pop(path_id, None)
        if live is None:
            return
        if live.timer is not None:
            live.timer.cancel()
        if live.offload_task is not None:
            live.offload_task.cancel()
        if self.offload is not None:
            await self.offload.remove(path_id)
        for transport in live.transports.values():
            transport.close()
        await asyncio.sleep(0)  # the transports close their sockets on the next loop turn
        for side in Side:
            _add(self.closed_counters, live.state.counters(side))

    async def close(self) -> None:
        for path_id in list(self.paths):
            await self.close_path(path_id)

    def offload_when_ready(self, live: LivePath) -> None:
        """Hand the path to the kernel once both ends are pinned (again after a move)."""
        if self.offload is None or (live.offload_task and not live.offload_task.done()):
            return
        state = live.state
        technician, home = state.pinned(Side.TECHNICIAN), state.pinned(Side.HOME)
        if technician is None or home is None:
            return
        live.offload_task = asyncio.get_running_loop().create_task(
            self._install(live, state.generation, technician, home)
        )

    async def _install(self, live: LivePath, generation: int, tech: Address, home: Address) -> None:
        assert self.offload is not None
        spec = live.state.spec
        await self.offload.remove(spec.path_id)
        ttl = live.state.deadline - self.clock()
        if ttl <= 0 or self.paths.get(spec.path_id) is not live:
            return
        await self.offload.install(spec, tech, home, ttl)
        live.offloaded = generation
        if live.state.generation != generation:  # an end moved while nft ran
            live.offload_task = None
            self.offload_when_ready(live)


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _add(total: Counters, more: Counters) -> None:
    total.packets += more.packets
    total.bytes += more.bytes
    for reason, count in more.drops.items():
        total.drops[reason] = total.drops.get(reason, 0) + count
