"""``ztb relay serve``'s run loop: read the relay document, keep the paths, serve metrics.

The document comes from a file (``--paths-file``, re-read when it changes; how the lab
wires paths by hand) and is applied with ``Relay.apply``. A bad document is logged and
the last good one stays in force, as the agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from netpolicy.errors import PolicyError
from netpolicy.relay import RelayState

from . import metrics
from .forwarder import Relay
from .kernel import KernelPaths
from .path import Limits

log = logging.getLogger("ztb.relay")
FILE_POLL_S = 0.1


class PortRangeError(PolicyError):
    """A document names a port outside the relay's range."""


@dataclass(frozen=True, slots=True)
class RelayOptions:
    host: str
    first_port: int
    port_count: int
    metrics: tuple[str, int] | None
    limits: Limits
    kernel: bool

    def check_ports(self, state: RelayState) -> None:
        last = self.first_port + self.port_count - 1
        for path in state.paths:
            for port in path.ports:
                if not self.first_port <= port <= last:
                    raise PortRangeError(
                        f"path {path.path_id}: port {port} is outside {self.first_port}-{last}"
                    )


class PathsFile:
    """A relay document on disk; ``read`` returns it when it changed since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None

    def read(self) -> RelayState | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._seen:
            return None
        self._seen = signature
        return RelayState.from_json(self.path.read_bytes())


async def run(options: RelayOptions, source: PathsFile, stop: asyncio.Event) -> None:
    kernel = KernelPaths(options.host, options.limits) if options.kernel else None
    if kernel is not None:
        await kernel.setup()
    relay = Relay(options.host, options.limits, kernel)
    server = None
    if options.metrics is not None:
        server = await metrics.serve(relay, kernel, *options.metrics)
    log.info("relay started", extra={"host": options.host, "kernel": kernel is not None})
    try:
        while not stop.is_set():
            try:
                state = source.read()
                if state is not None:
                    options.check_ports(state)
                    started = time.monotonic()
                    await relay.apply(state)
                    log.info(
                        "relay applied",
                        extra={
                            "revision": state.revision,
                            "paths": len(relay.paths),
                            "ms": round((time.monotonic() - started) * 1000, 1),
                        },
                    )
            except (PolicyError, OSError) as exc:
                log.error("relay document refused", extra={"reason": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FILE_POLL_S)
    finally:
        await relay.close()
        if server is not None:
            server.close()
        if kernel is not None:
            await kernel.teardown()


def serve_forever(options: RelayOptions, source: PathsFile) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(options, source, stop)

    asyncio.run(main())
