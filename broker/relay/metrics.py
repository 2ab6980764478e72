"""``/metrics`` of a relay: paths, packets, bytes and drops, in Prometheus text format.

Counted where they happen: packets the relay's sockets forwarded (``PathState``) plus
packets the kernel forwarded for offloaded paths (per-element nft counters), and drops by
reason. Served by a few lines of asyncio so the relay needs no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .forwarder import Relay
from .kernel import KernelPaths
from .path import Counters, Side

MAX_REQUEST = 8192


class _Snapshot(Collector):
    """One scrape's numbers, gathered before rendering (the kernel read is async)."""

    def __init__(self, relay: Relay, kernel: dict[str, Any]) -> None:
        self.relay = relay
        self.kernel = kernel

    def collect(self) -> Iterator[Metric]:
        relay = self.relay
        paths = GaugeMetricFamily("ztb_relay_paths", "Open relay paths", labels=["state"])
        offloaded = sum(1 for live in relay.paths.values() if live.offloaded >= 0)
        paths.add_metric(["open"], len(relay.paths))
        paths.add_metric(["in_kernel"], offloaded)
        yield paths
        packets = CounterMetricFamily(
            "ztb_relay_packets", "Packets forwarded", labels=["direction", "by"]
        )
        octets = CounterMetricFamily(
            "ztb_relay_bytes", "Bytes forwarded", labels=["direction", "by"]
        )
        drops = CounterMetricFamily(
            "ztb_relay_drops", "Datagrams dropped", labels=["side", "reason"]
        )
        for side in Side:
            total = Counters()
            for live in relay.paths.values():
                counters = live.state.counters(side)
                total.packets += counters.packets
                total.bytes += counters.bytes
                for reason, count in counters.drops.items():
                    total.drops[reason] = total.drops.get(reason, 0) + count
            direction = f"from_{side.value}"
            packets.add_metric([direction, "relay"], total.packets)
            octets.add_metric([direction, "relay"], total.bytes)
            for reason, count in sorted(total.drops.items(), key=lambda kv: kv[0].value):
                drops.add_metric([side.value, reason.value], count)
        closed = relay.closed_counters
        packets.add_metric(["closed_paths", "relay"], closed.packets)
        octets.add_metric(["closed_paths", "relay"], closed.bytes)
        kernel_paths: dict[str, tuple[int, int]] = self.kernel.get("paths", {})
        packets.add_metric(["both", "kernel"], sum(p for p, _ in kernel_paths.values()))
        octets.add_metric(["both", "kernel"], sum(b for _, b in kernel_paths.values()))
        drops.add_metric(["both", "kernel_rate"], int(self.kernel.get("rate_drops", 0)))
        yield packets
        yield octets
        yield drops


async def render(relay: Relay, kernel: KernelPaths | None) -> bytes:
    numbers: dict[str, Any] = {}
    if kernel is not None:
        with contextlib.suppress(Exception):  # a scrape must not fail because nft did
            numbers = await kernel.counters()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(relay, numbers))
    return generate_latest(registry)


async def serve(relay: Relay, kernel: KernelPaths | None, host: str, port: int) -> asyncio.Server:
    """A tiny HTTP/1.0 server: ``GET /metrics`` answers, everything else is 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            request = head[:MAX_REQUEST].split(b"\r\n", 1)[0].split()
            if len(request) >= 2 and request[0] == b"GET" and request[1] == b"/metrics":
                body, status = await render(relay, kernel), b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
