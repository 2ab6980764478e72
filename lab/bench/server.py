"""The smallest TCP server that answers: accept, send one byte, close.

Kept apart from ``lab.services`` on purpose: that server logs every arrival to a file
before answering, which would add its own latency to every timed connect. Exits by itself
after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import time
from contextlib import suppress


def serve(ports: list[int], max_seconds: float) -> None:
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(256)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            with conn, suppress(OSError):  # the client gave up first: nothing to answer
                conn.send(b"x")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.server", description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("ports", nargs="+", type=int)
    args = parser.parse_args()
    serve(args.ports, args.max_seconds)


if __name__ == "__main__":
    main()
