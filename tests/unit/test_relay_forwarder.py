"""The relay's event loop on loopback: real UDP sockets, crafted WireGuard messages."""

from __future__ import annotations

import asyncio
import socket

from broker.relay.forwarder import Relay
from broker.relay.path import Address
from netpolicy.relay import RelayPath, RelayState

from .relay_messages import data, initiation, keys, response

LOOPBACK = "127.0.0.1"


class RecordingOffload:
    """Stands in for nftables: remembers what the relay handed over and took back."""

    def __init__(self) -> None:
        self.installed: dict[str, tuple[Address, Address, float]] = {}
        self.removed: list[str] = []

    async def install(
        self, spec: RelayPath, technician: Address, home: Address, ttl: float
    ) -> None:
        self.installed[spec.path_id] = (technician, home, ttl)

    async def remove(self, path_id: str) -> None:
        self.removed.append(path_id)
        self.installed.pop(path_id, None)


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for sock in socks:
        sock.bind((LOOPBACK, 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _end() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(2)
    return sock


async def _receive(sock: socket.socket) -> bytes:
    return await asyncio.to_thread(lambda: sock.recvfrom(4096)[0])


def test_a_path_forwards_both_ways_then_closes_on_revoke() -> None:
    async def scenario() -> None:
        tech_port, home_port = _free_ports(2)
        tech_key, router_key = keys()
        spec = RelayPath("s1", tech_port, home_port, tech_key, router_key, 30)
        offload = RecordingOffload()
        relay = Relay(LOOPBACK, offload=offload)
        await relay.apply(RelayState("r", 1, (spec,)))
        tech, home = _end(), _end()
        home.sendto(initiation(1, tech_key), (LOOPBACK, home_port))
        await asyncio.sleep(0.05)
        hello = initiation(2, router_key)
        tech.sendto(hello, (LOOPBACK, tech_port))
        assert await _receive(home) == hello
        answer = response(3, 2, tech_key)
        home.sendto(answer, (LOOPBACK, home_port))
        assert await _receive(tech) == answer
        packet = data(3, 1000)
        tech.sendto(packet, (LOOPBACK, tech_port))
        assert await _receive(home) == packet
        await asyncio.sleep(0.05)
        technician, home_end, ttl = offload.installed["s1"]
        assert technician == tech.getsockname() and home_end == home.getsockname()
        assert 29 < ttl <= 30
        await relay.apply(RelayState("r", 2, ()))
        assert "s1" in offload.removed and not relay.paths
        rebind = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rebind.bind((LOOPBACK, tech_port))  # the port is free again: the path's socket is gone
        for sock in (tech, home, rebind):
            sock.close()

    asyncio.run(scenario())


def test_a_path_closes_itself_at_its_deadline() -> None:
    async def scenario() -> None:
        tech_port, home_port = _free_ports(2)
        tech_key, router_key = keys()
        spec = RelayPath("s1", tech_port, home_port, tech_key, router_key, 0.2)
        relay = Relay(LOOPBACK)
        await relay.apply(RelayState("r", 1, (spec,)))
        assert "s1" in relay.paths
        await asyncio.sleep(0.4)
        assert not relay.paths

    asyncio.run(scenario())


def test_a_new_revision_keeps_learned_ends_and_moves_only_the_deadline() -> None:
    async def scenario() -> None:
        tech_port, home_port = _free_ports(2)
        tech_key, router_key = keys()
        spec = RelayPath("s1", tech_port, home_port, tech_key, router_key, 30)
        relay = Relay(LOOPBACK)
        await relay.apply(RelayState("r", 1, (spec,)))
        home = _end()
        home.sendto(initiation(1, tech_key), (LOOPBACK, home_port))
        await asyncio.sleep(0.05)
        state = relay.paths["s1"].state
        shorter = RelayPath("s1", tech_port, home_port, tech_key, router_key, 5)
        await relay.apply(RelayState("r", 2, (shorter,)))
        assert relay.paths["s1"].state is state
        assert state.pinned is not None and state.deadline - relay.clock() <= 5
        await relay.close()
        home.close()

    asyncio.run(scenario())
