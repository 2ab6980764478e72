"""New-connection latency through a router holding N live grants.

Four identical client -> router -> server paths, one per firewall: ztb's sets, the
baseline's linear chain loaded in one transaction (as the full-reload manager leaves it),
the same chain kept by the incremental manager (loaded at start-up, then the newest
session appended by one rule), and none at all. The client's probe
addresses have two grants: probe 0 (tcp/8080) is the *last* session, so its rule is the
last of each chain (the worst case for a linear scan), and probe 1 (tcp/8081) sits in the
middle. Rounds
interleave every series so machine noise lands on all of them alike. Each sample is
``time.perf_counter`` around connect + first byte, taken inside the client namespace.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from agent.nftables.backend import LibNftables
from lab import netns
from netpolicy import nft
from netpolicy.nft import ElementDiff

from . import baseline, rig, workload
from .incremental import IncrementalChain
from .modes import Mode
from .results import Figure, Measurement, Ratio
from .stats import Summary

END_PORT, MIDDLE_PORT, UNGRANTED_PORT = 8080, 8081, 8082
RELOAD_END = "baseline chain, full reload, grant at end (rule N)"
INCREMENTAL_END = "baseline chain, incremental, grant at end (rule N, appended)"
CONNECT_TIMEOUT_S = 1.0
BLOCKED_TIMEOUT_S = 0.3
GAP_S = 0.002


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    client: str
    probe: int
    port: int


def _load(kind: str, n: int, router: str, interface: str) -> None:
    """The firewall of one path with ``n`` grants, probes at the end and the middle."""
    fillers = max(0, n - 2)
    state = workload.home(
        fillers,
        {fillers // 2: workload.probe(1, MIDDLE_PORT), fillers + 1: workload.probe(0, END_PORT)},
    )
    elements = workload.elements(state)
    with netns.inside(router):
        if kind == "ztb":
            diff = ElementDiff(add=elements, delete=frozenset())
            LibNftables().run(nft.table_commands(interface) + nft.diff_commands(diff))
        elif kind == "reload":
            LibNftables().run(baseline.table_commands(interface, elements))
        elif kind == "incremental":
            *loaded, newest = elements
            chain = IncrementalChain()
            chain.load(interface, loaded)
            chain.add(newest)
            chain.check()


def connect_once(client: str, probe: int, port: int, timeout: float) -> float:
    """Seconds for connect + first byte from probe address ``probe``; raises on failure."""
    sock = netns.socket_in(client, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.bind((str(workload.probe_tunnel_ip(probe)), 0))
        start = time.perf_counter()
        sock.connect((str(workload.PROBE_DEVICE_IP), port))
        if sock.recv(1) != b"x":
            raise RuntimeError("server answered with the wrong byte")
        return time.perf_counter() - start


def _blocked(client: str, probe: int, port: int) -> bool:
    try:
        connect_once(client, probe, port, BLOCKED_TIMEOUT_S)
    except OSError:
        return True
    return False


@contextmanager
def _paths(mode: Mode, prefix: str) -> Iterator[dict[str, rig.Path]]:
    ports = [END_PORT, MIDDLE_PORT, UNGRANTED_PORT]
    with ExitStack() as stack:
        paths: dict[str, rig.Path] = {}
        for kind, tag in (("ztb", "lz"), ("reload", "lb"), ("incremental", "li"), ("none", "ln")):
            p = stack.enter_context(rig.path(prefix, tag, probes=2))
            _load(kind, mode.latency_grants, p.router, p.tunnel_if)
            stack.enter_context(rig.tcp_server(p.server, ports, mode.latency_seconds + 120))
            paths[kind] = p
        rig.settle()
        yield paths


def _check_semantics(paths: dict[str, rig.Path]) -> dict[str, bool]:
    """Granted tuples pass on every path; an ungranted port passes only without firewall.

    Raises if any path behaves otherwise: a benchmark of unequal policies means nothing.
    """
    checks: dict[str, bool] = {}
    for kind, p in paths.items():
        for probe, port in ((0, END_PORT), (1, MIDDLE_PORT)):
            checks[f"{kind}: probe {probe} reaches tcp/{port}"] = not _blocked(
                p.client, probe, port
            )
        blocked = _blocked(p.client, 0, MIDDLE_PORT) and _blocked(p.client, 0, UNGRANTED_PORT)
        checks[f"{kind}: probe 0 blocked on ungranted ports"] = blocked
    wrong = [
        name
        for name, seen in checks.items()
        if seen != ("reaches" in name or not name.startswith("none"))
    ]
    if wrong:
        raise RuntimeError(f"firewall semantics differ from the policy: {', '.join(wrong)}")
    return checks


def measure(mode: Mode, prefix: str) -> Measurement:
    n = mode.latency_grants
    m = Measurement("connect_latency", f"New-connection latency, {n:,} grants")
    # Paths alternate inside a round and rounds only rotate, so every sample follows a
    # sample on another path: no series gets a server process that is already awake.
    series = [
        Series("no firewall, end tuple", "none", 0, END_PORT),
        Series("ztb sets, grant at end", "ztb", 0, END_PORT),
        Series(RELOAD_END, "reload", 0, END_PORT),
        Series(INCREMENTAL_END, "incremental", 0, END_PORT),
        Series("no firewall, middle tuple", "none", 1, MIDDLE_PORT),
        Series("ztb sets, grant in middle", "ztb", 1, MIDDLE_PORT),
        Series(f"baseline chain, full reload, grant in middle (rule ~{n // 2:,})", "reload", 1,
               MIDDLE_PORT),
        Series(f"baseline chain, incremental, grant in middle (rule ~{n // 2:,})",
               "incremental", 1, MIDDLE_PORT),
    ]  # fmt: skip
    with _paths(mode, prefix) as paths:
        checks = _check_semantics(paths)
        samples: dict[str, list[float]] = {s.name: [] for s in series}
        for s in series:  # warm-up: ARP, conntrack, caches
            for _ in range(10):
                connect_once(paths[s.client].client, s.probe, s.port, CONNECT_TIMEOUT_S)
        deadline = time.monotonic() + mode.latency_seconds
        for round_no in range(mode.latency_rounds):
            # rotate the order too, so no series always runs first in its round
            shift = round_no % len(series)
            for s in series[shift:] + series[:shift]:
                p = paths[s.client]
                samples[s.name].append(connect_once(p.client, s.probe, s.port, CONNECT_TIMEOUT_S))
                # idle gap: the closing packets of this connection (which cross the whole
                # baseline chain too) must not land inside the next sample's window
                time.sleep(GAP_S)
            if time.monotonic() >= deadline:
                break
    m.setup = {
        "grants": n,
        "path": "client ns -> router ns (forwarding) -> server ns; the router's client-side "
        "interface is a plain veth named like the WireGuard interface, no WireGuard",
        "sample": "perf_counter around connect + first byte, inside the client namespace",
        "interleaved": True,
        "checks": checks,
    }
    summaries = {name: Summary.of(values).scaled(1e6) for name, values in samples.items()}
    for name, summary in summaries.items():
        m.figures.append(Figure(name, "us", summary))
    none = summaries["no firewall, end tuple"]
    ztb_end = summaries["ztb sets, grant at end"]
    reload_end, incremental_end = summaries[RELOAD_END], summaries[INCREMENTAL_END]
    m.ratios += [
        Ratio(
            "ztb / no firewall, median connect (end tuple)",
            ztb_end.median / none.median,
            "x",
            "<=",
            1.1,
        ),
        Ratio("ztb / no firewall, p99 connect (end tuple)", ztb_end.p99 / none.p99),
        Ratio("full-reload chain (end) / ztb, median connect", reload_end.median / ztb_end.median),
        Ratio(
            "incremental chain (end) / ztb, median connect",
            incremental_end.median / ztb_end.median,
        ),
    ]
    return m
