"""Real-packet probes from inside a lab namespace, and a steady probe flow for timing.

TCP and UDP probes open their socket inside the namespace (``netns.inside``) and then run
in the caller's process, so a probe costs a round trip, not a Python start-up. Crafted
packets (a forged source address, raw IPv6) are built with scapy in a subprocess under
``ip netns exec``, so scapy never touches the host's interfaces.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import ip_address

from . import netns


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    proto: str
    port: int

    def __str__(self) -> str:
        return f"{self.host} {self.proto}/{self.port}"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``ok`` means a reply came back; ``reply`` is what the far end said."""

    target: Target
    ok: bool
    started: float
    elapsed: float
    reply: str = ""
    error: str = ""


def _family(host: str) -> int:
    return socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET


def probe(ns: str, target: Target, timeout: float = 1.0, source: str | None = None) -> ProbeResult:
    """One TCP connect (read the banner) or one UDP datagram (await the echo)."""
    kind = socket.SOCK_STREAM if target.proto == "tcp" else socket.SOCK_DGRAM
    started = time.time()
    t0 = time.monotonic()
    try:
        with netns.socket_in(ns, _family(target.host), kind) as sock:
            sock.settimeout(timeout)
            if source:
                sock.bind((source, 0))
            if target.proto == "tcp":
                sock.connect((target.host, target.port))
                reply = sock.recv(256)
            else:
                sock.sendto(b"probe", (target.host, target.port))
                reply = sock.recv(256)
    except OSError as exc:
        error = str(exc) or "timeout"
        return ProbeResult(target, False, started, time.monotonic() - t0, error=error)
    text = reply.decode(errors="replace").strip()
    return ProbeResult(target, bool(text), started, time.monotonic() - t0, reply=text)


def probe_all(
    ns: str, targets: Sequence[Target], timeout: float = 1.0, source: str | None = None
) -> list[ProbeResult]:
    """Probe every target at once, so a list of blocked targets costs one timeout."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return list(pool.map(lambda t: probe(ns, t, timeout, source), targets))


@dataclass(frozen=True, slots=True)
class FlowResult:
    """A steady probe flow: every attempt, and when the first one failed (or None)."""

    results: tuple[ProbeResult, ...] = field(repr=False)
    first_failure: float | None

    @property
    def successes(self) -> int:
        return sum(r.ok for r in self.results)


def steady_flow(
    ns: str,
    target: Target,
    *,
    interval: float = 0.05,
    timeout: float = 0.25,
    max_count: int = 400,
    max_seconds: float = 20.0,
    stop_after_failures: int = 3,
) -> FlowResult:
    """Probe ``target`` every ``interval`` until ``stop_after_failures`` failures in a row.

    Bounded by ``max_count`` attempts and ``max_seconds``. The first failure is the start
    time of the first attempt of the final failing run: a single lost probe followed by
    a success is not the end of access.
    """
    results: list[ProbeResult] = []
    deadline = time.monotonic() + max_seconds
    streak: list[ProbeResult] = []
    while len(results) < max_count and time.monotonic() < deadline:
        result = probe(ns, target, timeout)
        results.append(result)
        streak = [] if result.ok else [*streak, result]
        if len(streak) >= stop_after_failures:
            break
        time.sleep(max(0.0, interval - result.elapsed))
    first = streak[0].started if len(streak) >= stop_after_failures else None
    return FlowResult(tuple(results), first)


def send_crafted(ns: str, src: str, dst: str, dport: int, payload: str, count: int = 3) -> None:
    """Send UDP packets with an arbitrary source address from namespace ``ns``."""
    argv = [sys.executable, "-m", "lab.probes", "craft", src, dst, str(dport), payload]
    netns.run_in(ns, [*argv, "--count", str(count)])


def _craft(src: str, dst: str, dport: int, payload: str, count: int) -> None:
    """Build with scapy, send through a raw socket: the kernel routes by destination,
    so a forged source still leaves through the route (the WireGuard interface)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    v6 = ip_address(dst).version == 6
    layer = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    packet = bytes(layer / UDP(sport=40000, dport=dport) / payload.encode())
    family = socket.AF_INET6 if v6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for _ in range(count):
            raw.sendto(packet, (dst, 0))
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.probes")
    sub = parser.add_subparsers(dest="command", required=True)
    craft = sub.add_parser("craft", help="send forged UDP packets (run inside a namespace)")
    craft.add_argument("src")
    craft.add_argument("dst")
    craft.add_argument("dport", type=int)
    craft.add_argument("payload")
    craft.add_argument("--count", type=int, default=3, choices=range(1, 101))
    args = parser.parse_args(argv)
    _craft(args.src, args.dst, args.dport, args.payload, args.count)


if __name__ == "__main__":
    main()
