"""The relay's benchmark rows: relay vs direct in one lab run, and 1,000 idle paths.

``relay_vs_direct``: the NAT lab (``lab.nat_topology``); the technician behind its NAT has
one session with home 1 (public address, direct) and one with home 2 (behind NAT, through
the relay), and the rounds interleave the two so machine noise lands on both. Latency is
TCP connect + first byte through the tunnel; throughput is a bulk TCP send through the
tunnel for a fixed time, counted by the receiver. Home 2 sits behind one more NAT hop than
home 1, so the added latency is an upper bound on what the relay adds. The relay runs with
kernel forwarding (the product default), then again with ``--no-kernel`` (every packet
through the Python loop) for the record.

``relay_capacity``: a second relay process with 1,000 paths whose both ends pin themselves
with mac1-valid handshakes (crafted: a confirmed handshake per path) and then send a
keepalive every ``keepalive_s``; the relay's RSS and CPU are read from ``/proc``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

from broker.relay import wire
from lab import netns
from lab.harness import Lab, ztb_argv
from lab.nat_topology import HOMES, RELAY_IP, NatHome, NatLab
from lab.probes import Target, probe
from netpolicy.relay import RelayPath, RelayState
from ztb.files import write_atomic
from ztb.wgkeys import key_pair

from .modes import Mode
from .results import Figure, Measurement, Ratio
from .stats import Summary

BULK_PORT = 5201
CHUNK = 64 * 1024
CAPACITY_FIRST_PORT = 20000
CAPACITY_METRICS_PORT = 9480
PATHS = 1_000
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _connect_ms(nat: NatLab, home: NatHome) -> float:
    result = probe(nat.tech_ns, Target(str(home.device_ip), "tcp", 443), 2.0)
    if not result.ok:
        raise RuntimeError(f"home {home.index}: no answer through the tunnel ({result.error})")
    return result.elapsed * 1000


def _bulk_mbit(nat: NatLab, home: NatHome, seconds: float) -> float:
    """Send for ``seconds`` from the technician to a sink on ``home``'s device."""
    with netns.inside(nat.device_ns(home)):
        server = socket.create_server((str(home.device_ip), BULK_PORT))
    received = [0]

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(seconds + 10)
            while data := conn.recv(CHUNK):
                received[0] += len(data)

    thread = threading.Thread(target=sink)
    thread.start()
    payload = os.urandom(CHUNK)
    try:
        with netns.socket_in(nat.tech_ns, socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect((str(home.device_ip), BULK_PORT))
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            thread.join(timeout=15)
            elapsed = time.monotonic() - started
    finally:
        server.close()
    return received[0] * 8 / elapsed / 1e6


def _run(prefix: str, kernel: bool, rounds: int, bulk_s: float) -> dict[str, list[float]]:
    """One NAT lab: interleaved connects and bulk sends, direct (home 1) and relayed (home 2)."""
    direct, relayed = HOMES[0], HOMES[1]
    series: dict[str, list[float]] = {
        name: [] for name in ("direct ms", "relay ms", "direct mbit", "relay mbit")
    }
    with Lab(prefix=prefix, technicians=1, connect_technicians=False) as lab:
        nat = NatLab(lab, relay_kernel=kernel)
        nat.build()
        nat.open_sessions(("dev:tcp/443", f"dev:tcp/{BULK_PORT}"), expires_in=3600)
        for _ in range(rounds):
            series["direct ms"].append(_connect_ms(nat, direct))
            series["relay ms"].append(_connect_ms(nat, relayed))
        for _ in range(3):
            series["direct mbit"].append(_bulk_mbit(nat, direct, bulk_s))
            series["relay mbit"].append(_bulk_mbit(nat, relayed, bulk_s))
    return series


def relay_vs_direct(mode: Mode, prefix: str) -> Measurement:
    rounds = 40 if mode.name == "quick" else 400
    bulk_s = 2.0 if mode.name == "quick" else 8.0
    main = {k: Summary.of(v) for k, v in _run(f"{prefix}r", True, rounds, bulk_s).items()}
    python = {k: Summary.of(v) for k, v in _run(f"{prefix}p", False, rounds // 4, bulk_s).items()}
    added_p50 = main["relay ms"].median - main["direct ms"].median
    added_p99 = main["relay ms"].p99 - main["direct ms"].p99
    return Measurement(
        "relay_vs_direct",
        "Relay vs direct (same run)",
        setup={"rounds": rounds, "bulk_seconds": bulk_s, "bulk_trials": 3},
        figures=[
            Figure("TCP connect, direct (home 1)", "ms", main["direct ms"]),
            Figure("TCP connect, relay (home 2)", "ms", main["relay ms"]),
            Figure("TCP connect, relay without kernel hand-off", "ms", python["relay ms"]),
            Figure("bulk TCP, direct", "Mbit/s", main["direct mbit"]),
            Figure("bulk TCP, relay", "Mbit/s", main["relay mbit"]),
            Figure("bulk TCP, relay without kernel hand-off", "Mbit/s", python["relay mbit"]),
        ],
        ratios=[
            Ratio("relay added latency p50", added_p50, "ms", "<=", 1.0),
            Ratio("relay added latency p99", added_p99, "ms"),
            Ratio("relay throughput", main["relay mbit"].median, "Mbit/s", ">=", 200.0),
            Ratio(
                "relay / direct throughput",
                main["relay mbit"].median / main["direct mbit"].median,
            ),
        ],
    )


def _relay_usage(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds so far) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _handshake(kind: int, indexes: tuple[int, ...], size: int, receiver_key: str) -> bytes:
    body = struct.pack(f"<Bxxx{'I' * len(indexes)}", kind, *indexes)
    body += os.urandom(size - 2 * wire.MAC_SIZE - len(body))
    return wire.with_mac1(body, wire.mac1_key(receiver_key))


def _pin_all(paths: list[RelayPath], ends: list[tuple[socket.socket, socket.socket]]) -> None:
    """Per path: the home's handshake, the technician's, the home's answer (all mac1-valid)."""
    relay = str(RELAY_IP)
    for index, (spec, (tech, home)) in enumerate(zip(paths, ends, strict=True)):
        first = 3 * index + 1
        to_home, to_tech = (relay, spec.home_port), (relay, spec.technician_port)
        home.sendto(_handshake(wire.INITIATION, (first,), 148, spec.technician_key), to_home)
        tech.sendto(_handshake(wire.INITIATION, (first + 1,), 148, spec.router_key), to_tech)
        time.sleep(0.002)
        answer = _handshake(wire.RESPONSE, (first + 2, first + 1), 92, spec.technician_key)
        home.sendto(answer, to_home)


def relay_capacity(mode: Mode, prefix: str) -> Measurement:
    keepalive_s = 5.0 if mode.name == "quick" else 25.0
    window_s = 10.0 if mode.name == "quick" else 60.0
    with Lab(prefix=f"{prefix}c", technicians=1, connect_technicians=False) as lab:
        nat = NatLab(lab)
        nat.build(homes=False)
        doc = lab.run_dir / "capacity-paths.json"
        keys = [(key_pair()[1], key_pair()[1]) for _ in range(PATHS)]
        paths = [
            RelayPath(f"p{i}", CAPACITY_FIRST_PORT + 2 * i, CAPACITY_FIRST_PORT + 2 * i + 1,
                      tech, router, 3600)
            for i, (tech, router) in enumerate(keys)
        ]  # fmt: skip
        write_atomic(doc, RelayState("capacity", 1, tuple(paths)).to_json(), 0o600)
        argv = ztb_argv(
            "relay", "serve", "--listen", f"{RELAY_IP}:{CAPACITY_FIRST_PORT}",
            "--ports", str(2 * PATHS), "--paths-file", str(doc),
            "--metrics", f"{RELAY_IP}:{CAPACITY_METRICS_PORT}",
        )  # fmt: skip
        popen = lab.spawn(nat.relay_ns, argv, "capacity relay", lab.run_dir / "capacity.log")
        _wait_for(lab.run_dir / "capacity.log", f'"paths": {PATHS}')
        with netns.inside(lab.topo.host):
            ends = [
                (socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                 socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                for _ in paths
            ]  # fmt: skip
        try:
            _pin_all(paths, ends)
            _wait_in_kernel(nat, PATHS)
            rss_before, cpu_before = _relay_usage(popen.pid)
            keepalive = struct.pack("<BxxxIQ", wire.TRANSPORT, 1, 0) + bytes(16)
            started = time.monotonic()
            sent = 0
            while time.monotonic() - started < window_s:
                for spec, (tech, home) in zip(paths, ends, strict=True):
                    tech.sendto(keepalive, (str(RELAY_IP), spec.technician_port))
                    home.sendto(keepalive, (str(RELAY_IP), spec.home_port))
                    sent += 2
                time.sleep(max(0.0, keepalive_s - (time.monotonic() - started) % keepalive_s))
            elapsed = time.monotonic() - started
            rss, cpu = _relay_usage(popen.pid)
            metrics = nat.relay_metrics(CAPACITY_METRICS_PORT)
        finally:
            for pair in ends:
                for sock in pair:
                    sock.close()
    in_kernel = _gauge(metrics, 'ztb_relay_paths{state="in_kernel"}')
    cpu_pct = (cpu - cpu_before) / elapsed * 100
    return Measurement(
        "relay_capacity",
        "Relay with 1,000 paths",
        setup={
            "paths": PATHS,
            "keepalive_s": keepalive_s,
            "window_s": window_s,
            "keepalives_sent": sent,
            "paths_in_kernel": in_kernel,
        },
        figures=[
            Figure("relay RSS, 1,000 paths", "MB", value=round(rss, 1)),
            Figure("relay RSS before keepalives", "MB", value=round(rss_before, 1)),
            Figure("relay CPU with keepalives", "% of one core", value=round(cpu_pct, 2)),
        ],
        ratios=[Ratio("paths handed to the kernel", in_kernel, "paths", ">=", PATHS)],
    )


def _gauge(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_in_kernel(nat: NatLab, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            metrics = nat.relay_metrics(CAPACITY_METRICS_PORT)
        except RuntimeError:  # a scrape that timed out while the relay was busy
            metrics = ""
        if _gauge(metrics, 'ztb_relay_paths{state="in_kernel"}') >= count:
            return
        time.sleep(1.0)


def _wait_for(log: Path, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text():
            return
        time.sleep(0.1)
    tail = log.read_text()[-300:] if log.exists() else "no log"
    raise RuntimeError(f"relay did not load its paths: {tail}")
