"""The relay with real packets: homes behind NAT and CGNAT, a technician behind NAT.

Relay paths are wired without the broker: the relay reads its document from a file and
each router's agent its desired state (whose relayed sessions carry ``relay_endpoint``, so
the agent points the peer at the relay with a keepalive); the technician uses stock
``wg-quick`` with the file ``render_wg_quick`` makes.
Every "blocked" check has a matching "open" check on the same path.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from broker.relay import wire
from lab import netns
from lab.harness import Lab
from lab.nat_topology import HOMES, RELAY_IP, NatHome, NatLab
from lab.probes import FlowResult, Target, probe_all, steady_flow

pytestmark = pytest.mark.lab

OPEN_TIMEOUT_S = 2.0
BLOCKED_TIMEOUT_S = 0.6
GRANTS = ("dev:tcp/443",)
ETH_P_ALL = 0x0003


@pytest.fixture(scope="module")
def nat() -> Iterator[NatLab]:
    with Lab(technicians=1, connect_technicians=False) as lab:
        nat_lab = NatLab(lab)
        nat_lab.build()
        nat_lab.open_sessions(GRANTS, expires_in=900)
        yield nat_lab


def _granted(home: NatHome) -> Target:
    return Target(str(home.device_ip), "tcp", 443)


def _assert_open(nat: NatLab, homes: tuple[NatHome, ...]) -> None:
    results = probe_all(nat.tech_ns, [_granted(h) for h in homes], OPEN_TIMEOUT_S)
    failed = [f"{r.target}: {r.error}" for r in results if not r.ok]
    assert not failed, f"no answer through the tunnel: {failed}"
    assert [r.reply for r in results] == [f"{nat.device_name(h)} tcp/443" for h in homes]


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_natted_technician_reaches_the_granted_device_in_all_three_homes(
    nat: NatLab,
) -> None:
    _assert_open(nat, HOMES)
    for home in HOMES[1:]:  # the agent pointed each relayed peer at the relay
        dump = netns.run_in(nat.router_ns(home), ["wg", "show", nat.router_wg(home), "dump"])
        peer = dump.stdout.strip().splitlines()[1].split("\t")
        assert (peer[2], peer[7]) == (nat.relay_endpoint(home.relay_ports[1]), "25")
    for home in HOMES:
        since = time.time() - 10
        sources = {a.src for a in nat.lab.arrivals(nat.device_name(home), since)}
        assert str(home.tech_tunnel_ip) in sources, "the device sees the session's tunnel address"
    metrics = nat.relay_metrics()
    assert _metric(metrics, "ztb_relay_paths", state="open") == 2
    assert _metric(metrics, "ztb_relay_paths", state="in_kernel") == 2, metrics


def test_relayed_sessions_are_blocked_from_everything_else(nat: NatLab) -> None:
    relayed = [h for h in HOMES if h.reachability == "relay"]
    since = time.time()
    blocked = []
    for home in relayed:
        blocked += [
            Target(str(home.device_ip), "tcp", 80),  # same device, port not granted
            Target(str(home.router_ip), "tcp", 22),  # the router itself
        ]
    results = probe_all(nat.tech_ns, blocked, BLOCKED_TIMEOUT_S)
    leaked = [f"{r.target}: {r.reply}" for r in results if r.ok]
    assert not leaked, f"answered outside the grant: {leaked}"
    for home in relayed:
        arrivals = nat.lab.arrivals(nat.device_name(home), since)
        assert not [a for a in arrivals if a.port == 80], "a blocked packet reached the device"
        assert not nat.lab.arrivals(f"h{home.index}router", since)
    _assert_open(nat, tuple(relayed))


def _capture(ns: str, ifname: str, seconds: float, out: list[bytes]) -> threading.Thread:
    with netns.inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.settimeout(0.2)

    def run() -> None:
        deadline = time.monotonic() + seconds
        with sock:
            while time.monotonic() < deadline:
                try:
                    out.append(sock.recv(65535))
                except TimeoutError:
                    continue

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_sniffer_on_the_relay_sees_no_plaintext_of_the_answer(nat: NatLab) -> None:
    frames: list[bytes] = []
    sniffer = _capture(nat.relay_ns, "wan", 2.0, frames)
    time.sleep(0.2)
    relayed = tuple(h for h in HOMES if h.reachability == "relay")
    for _ in range(3):
        _assert_open(nat, relayed)
    sniffer.join()
    seen = b"".join(frames)
    relay_port = struct.pack("!H", relayed[0].relay_ports[0])
    assert len(frames) > 20 and relay_port in seen, "the sniffer saw the relayed traffic"
    for home in relayed:
        banner = f"{nat.device_name(home)} tcp/443".encode()
        assert banner not in seen, "the relay saw the device's answer in plaintext"


def _junk(count: int, seconds: float, ports: list[int]) -> int:
    """Junk, fake handshakes and fake data at the relay's path ports, bounded."""
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while sent < count and time.monotonic() < deadline:
            port = ports[sent % len(ports)]
            kind = sent % 3
            if kind == 0:
                payload = os.urandom(64 + sent % 200)
            elif kind == 1:  # an initiation with a made-up mac1
                payload = struct.pack("<BxxxI", wire.INITIATION, sent) + os.urandom(140)
            else:  # data naming plausible indexes
                payload = struct.pack("<BxxxIQ", wire.TRANSPORT, sent, sent) + os.urandom(96)
            sock.sendto(payload, (str(RELAY_IP), port))
            sent += 1
            if sent % 500 == 0:
                time.sleep(0.01)
    return sent


def test_a_junk_flood_from_a_third_host_leaves_the_session_working(nat: NatLab) -> None:
    home = HOMES[1]
    before = nat.relay_metrics()
    flows: list[FlowResult] = []
    flow = threading.Thread(
        target=lambda: flows.append(
            steady_flow(nat.tech_ns, _granted(home), interval=0.1, timeout=1.0, max_seconds=4)
        )
    )
    flow.start()
    ports = [p for h in HOMES if h.reachability == "relay" for p in h.relay_ports]
    with netns.inside(nat.lab.topo.host):  # the internet host: a stranger to every path
        sent = _junk(30_000, 3.5, ports)
    flow.join()
    (result,) = flows
    failed = [r for r in result.results if not r.ok]
    assert result.successes >= 20 and not failed, f"{len(failed)} probes failed under junk"
    _assert_open(nat, HOMES)
    after = nat.relay_metrics()
    dropped = sum(
        _metric(after, "ztb_relay_drops_total", side=side, reason=reason)
        - _metric(before, "ztb_relay_drops_total", side=side, reason=reason)
        for side in ("technician", "home")
        for reason in ("malformed", "bad_mac", "unknown_source")
    )
    print(f"\njunk sent {sent}, dropped by the relay {dropped:.0f}")
    assert dropped > sent * 0.5, "the relay saw and dropped the junk"


def _reopen(nat: NatLab, home: NatHome, expires_in: float) -> float:
    """A fresh session and path for ``home``; returns when the broker would have sent it."""
    written = time.time()
    session = nat.session(home, GRANTS, expires_in, nat.new_psk())
    others = [nat.path(h, 900) for h in HOMES if h.reachability == "relay" and h is not home]
    nat.write_paths([*others, nat.path(home, expires_in)])
    nat.write_desired(home, [session])
    nat.wait_applied(home)
    nat.connect_technician(home, session)
    return written


def test_revoke_through_the_relay_drops_the_flow_within_a_second(nat: NatLab) -> None:
    home = HOMES[2]
    _reopen(nat, home, 300)
    flows: list[FlowResult] = []
    flow = threading.Thread(
        target=lambda: flows.append(
            steady_flow(nat.tech_ns, _granted(home), interval=0.05, max_seconds=8)
        )
    )
    flow.start()
    time.sleep(1.0)
    revoked = time.time()
    nat.write_desired(home, [])
    others = [nat.path(h, 900) for h in HOMES if h.reachability == "relay" and h != home]
    nat.write_paths(others, wait=False)
    flow.join()
    (result,) = flows
    assert result.first_failure is not None, "access never ended"
    lag = result.first_failure - revoked
    print(f"\nrevoke -> first failed probe through the relay: {lag * 1000:.0f} ms")
    assert lag <= 1.0
    assert [r for r in result.results if r.ok and r.started < revoked], "it worked before"


def test_expiry_through_the_relay_ends_access_on_time(nat: NatLab) -> None:
    home = HOMES[1]
    lifetime = 5.0
    written = _reopen(nat, home, lifetime)
    result = steady_flow(nat.tech_ns, _granted(home), interval=0.05, max_seconds=12)
    assert result.first_failure is not None, "access never ended"
    promised = written + lifetime
    offset = result.first_failure - promised
    print(f"\nfirst failed probe {offset * 1000:+.0f} ms from the promised end (relay path)")
    assert -1.3 <= offset <= 0.5, "whole-second kernel timeouts end access up to 1 s early"
    assert result.successes > 0
