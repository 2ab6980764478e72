"""A client -> router -> server path in three fresh namespaces, and nftables inside them.

The router's client-side interface is a plain veth carrying the WireGuard interface's
name, so ztb's rules (which match ``iifname``) apply unchanged; no WireGuard runs here,
because the benchmarks time the firewall, not the cipher. Every namespace carries a
unique prefix and is removed on exit, also after a failure; nothing touches the root
namespace.
"""

from __future__ import annotations

import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from ipaddress import IPv4Address

from agent.nftables.backend import LibNftables
from lab import netns

from . import workload

SERVER_READY_TIMEOUT_S = 10.0


def unique_prefix() -> str:
    """``zb`` plus random hex: short enough for interface names, unique per run."""
    return f"zb{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Path:
    client: str
    router: str
    server: str
    tunnel_if: str

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.router, self.server)


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """One empty namespace (loopback up), removed on exit."""
    netns.create_namespace(name)
    try:
        yield name
    finally:
        netns.remove_namespace(name)


@contextmanager
def path(prefix: str, tag: str, probes: int) -> Iterator[Path]:
    """Client (owning ``probes`` probe tunnel addresses) -> router -> probe device."""
    p = Path(f"{prefix}-{tag}c", f"{prefix}-{tag}r", f"{prefix}-{tag}s", f"wg{prefix}{tag}")
    created: list[str] = []
    try:
        for name in p.namespaces:
            netns.create_namespace(name)
            created.append(name)
        _wire(p, [workload.probe_tunnel_ip(k) for k in range(probes)])
        yield p
    finally:
        for name in reversed(created):
            with suppress(Exception):
                netns.remove_namespace(name)


def _wire(p: Path, client_ips: Sequence[IPv4Address]) -> None:
    pool, lan = workload.TUNNEL_POOL, workload.LAN
    netns.add_veth(p.client, "tun0", p.router, p.tunnel_if)
    netns.add_veth(p.router, "lan0", p.server, "eth0")
    netns.configure(
        p.client,
        "tun0",
        [f"{ip}/{pool.prefixlen}" for ip in client_ips],
        [(str(lan), str(workload.ROUTER_TUNNEL_IP))],
    )
    netns.configure(p.router, p.tunnel_if, [f"{workload.ROUTER_TUNNEL_IP}/{pool.prefixlen}"])
    netns.configure(p.router, "lan0", [f"{workload.ROUTER_LAN_IP}/{lan.prefixlen}"])
    netns.configure(
        p.server,
        "eth0",
        [f"{workload.PROBE_DEVICE_IP}/{lan.prefixlen}"],
        [(str(pool), str(workload.ROUTER_LAN_IP))],
    )
    netns.sysctl(p.router, {"net.ipv4.ip_forward": "1"})


def nft_in(name: str) -> LibNftables:
    """The agent's libnftables backend, bound to namespace ``name`` (its netlink socket
    is opened at creation, in the creating thread's namespace)."""
    with netns.inside(name):
        return LibNftables()


@contextmanager
def tcp_server(name: str, ports: Sequence[int], max_seconds: float) -> Iterator[None]:
    """``lab.bench.server`` in namespace ``name``; waits until it listens, kills it after."""
    argv = [sys.executable, "-m", "lab.bench.server", "--max-seconds", str(max_seconds)]
    argv += [str(port) for port in ports]
    proc = subprocess.Popen(netns.exec_argv(name, argv), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], SERVER_READY_TIMEOUT_S)
        if not ready or proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"bench server in {name} did not start")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def settle(seconds: float = 0.2) -> None:
    """Let fresh links finish coming up before the first timed packet."""
    time.sleep(seconds)
