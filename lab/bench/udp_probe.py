"""Steady UDP probe flows from the client to the server, to see when traffic stops.

Each flow sends one numbered datagram every ``period`` seconds from its own probe address
while its window is open; the server side records which numbers arrived. The first
dropped probe of a flow is the one after the last that arrived: losses earlier in the
flow (none are expected on veths) cannot fake an early cut.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from lab import netns

from . import workload

PORT = 9000
PERIOD_S = 0.010
_RECV_POLL_S = 0.1


@dataclass(slots=True)
class Flow:
    """One probe flow: its window, every send time by number, and what arrived."""

    start: float
    stop: float
    sent: list[float] = field(default_factory=list)
    received: set[int] = field(default_factory=set)


def first_drop(sent: Sequence[float], received: set[int]) -> float | None:
    """Send time of the first probe after the last one that arrived (None: no drop seen,
    or nothing ever arrived, which says nothing about when access ended)."""
    if not received:
        return None
    after = max(received) + 1
    return sent[after] if after < len(sent) else None


def _send_loop(flows: Mapping[int, Flow], socks: Mapping[int, socket.socket], end: float) -> None:
    target = (str(workload.PROBE_DEVICE_IP), PORT)
    tick = time.perf_counter()
    while tick < end:
        for k, flow in flows.items():
            now = time.perf_counter()
            if flow.start <= now < flow.stop:
                seq = len(flow.sent)
                flow.sent.append(now)
                with suppress(OSError):  # a refused send is a drop like any other
                    socks[k].sendto(f"{k},{seq}".encode(), target)
        tick += PERIOD_S
        time.sleep(max(0.0, tick - time.perf_counter()))


def _receive_loop(flows: Mapping[int, Flow], sock: socket.socket, end: float) -> None:
    sock.settimeout(_RECV_POLL_S)
    while time.perf_counter() < end:
        try:
            data = sock.recv(64)
        except TimeoutError:
            continue
        k, _, seq = data.decode().partition(",")
        flow = flows.get(int(k))
        if flow is not None:
            flow.received.add(int(seq))


class ProbeFlows:
    """Sender and receiver threads for ``flows`` (keyed by probe index), until ``end``."""

    def __init__(self, client: str, server: str, flows: Mapping[int, Flow], end: float) -> None:
        self.flows = flows
        self._socks: dict[int, socket.socket] = {}
        for k in flows:
            sock = netns.socket_in(client, socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((str(workload.probe_tunnel_ip(k)), 0))
            self._socks[k] = sock
        self._server = netns.socket_in(server, socket.AF_INET, socket.SOCK_DGRAM)
        self._server.bind(("0.0.0.0", PORT))
        self._threads = [
            threading.Thread(target=_send_loop, args=(flows, self._socks, end), daemon=True),
            threading.Thread(target=_receive_loop, args=(flows, self._server, end), daemon=True),
        ]

    def __enter__(self) -> ProbeFlows:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        for thread in self._threads:
            thread.join(timeout=30)
        for sock in [*self._socks.values(), self._server]:
            sock.close()
