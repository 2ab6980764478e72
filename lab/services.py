"""A bounded toy server for one lab host: TCP banners, UDP echo, and an arrival log.

Run inside a namespace: ``python -m lab.services --name camera --tcp 554 --udp 5000-5010
--log FILE``. Every accepted connection and every datagram is logged as one JSON line
with its arrival time, so tests can prove that a blocked packet never arrived and
benchmarks can time when traffic stopped. The first line is ``{"event": "ready"}`` once
every socket listens. The server exits by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from netpolicy.grants import PortRange

MAX_PORTS = 64


@dataclass(frozen=True, slots=True)
class Arrival:
    """One logged arrival at a lab host."""

    t: float
    proto: str
    port: int
    src: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arrival:
        src = str(data["src"]).removeprefix("::ffff:")
        return cls(float(data["t"]), str(data["proto"]), int(data["port"]), src)


def banner(name: str, proto: str, port: int) -> str:
    """What a host answers: tests compare against it to know who really replied."""
    return f"{name} {proto}/{port}"


def read_arrivals(log: Path, since: float = 0.0) -> list[Arrival]:
    """Arrivals logged at or after ``since`` (a missing log means none yet)."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        data = json.loads(line)
        if "proto" in data and float(data["t"]) >= since:
            found.append(Arrival.from_dict(data))
    return found


def is_ready(log: Path) -> bool:
    return log.exists() and '"event": "ready"' in log.read_text()


def _ports(specs: list[str]) -> Iterator[int]:
    for spec in specs:
        for part in spec.split(","):
            span = PortRange.parse(part)
            yield from range(span.first, span.last + 1)


def _listen(proto: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 and IPv6 alike
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    if proto == "tcp":
        sock.listen(64)
    sock.setblocking(False)
    return sock


def _log(out: IO[str], record: dict[str, Any]) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def serve(name: str, tcp: list[int], udp: list[int], log: Path, max_seconds: float) -> None:
    if len(tcp) + len(udp) > MAX_PORTS:
        raise SystemExit(f"at most {MAX_PORTS} ports per host")
    selector = selectors.DefaultSelector()
    for proto, ports in (("tcp", tcp), ("udp", udp)):
        for port in ports:
            selector.register(_listen(proto, port), selectors.EVENT_READ, (proto, port))
    deadline = time.monotonic() + max_seconds
    with log.open("a") as out:
        _log(out, {"event": "ready", "t": time.time(), "pid": os.getpid(), "name": name})
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                proto, port = key.data
                _answer(sock, name, proto, port, out)


def _answer(sock: socket.socket, name: str, proto: str, port: int, out: IO[str]) -> None:
    text = banner(name, proto, port).encode()
    try:
        if proto == "tcp":
            conn, peer = sock.accept()
            with conn:
                _log(out, {"t": time.time(), "proto": proto, "port": port, "src": peer[0]})
                conn.settimeout(0.5)
                conn.sendall(text + b"\n")
        else:
            _, peer = sock.recvfrom(2048)
            _log(out, {"t": time.time(), "proto": proto, "port": port, "src": peer[0]})
            sock.sendto(text, peer)
    except OSError:
        pass  # a peer that vanished mid-answer is the peer's problem, not the server's


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.services", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--tcp", action="append", default=[], help="PORT or FIRST-LAST")
    parser.add_argument("--udp", action="append", default=[], help="PORT or FIRST-LAST")
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    serve(args.name, list(_ports(args.tcp)), list(_ports(args.udp)), args.log, args.max_seconds)


if __name__ == "__main__":
    main()
