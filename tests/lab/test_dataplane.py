"""The data plane with real packets: WireGuard (wireguard-go), nftables and the real agent.

Every "blocked" check has a matching "open" check on the same path, so a broken tunnel
cannot pass as a working firewall.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from lab.harness import Lab
from lab.probes import FlowResult, ProbeResult, Target, probe_all, send_crafted, steady_flow
from lab.topology import INTERNET_HOST_IP, ROUTER_LAN_IP, ROUTER_TUNNEL_IP

pytestmark = pytest.mark.lab

OPEN_TIMEOUT_S = 2.0
BLOCKED_TIMEOUT_S = 0.6


def _describe(results: Sequence[ProbeResult]) -> str:
    return "; ".join(f"{r.target}: {r.reply or r.error}" for r in results)


def assert_open(ns: str, targets: Sequence[Target], banners: Sequence[str] = ()) -> None:
    results = probe_all(ns, targets, OPEN_TIMEOUT_S)
    failed = [r for r in results if not r.ok]
    assert not failed, f"expected answers from {ns}: {_describe(failed)}"
    if banners:
        assert [r.reply for r in results] == list(banners)


def assert_blocked(ns: str, targets: Sequence[Target], source: str | None = None) -> None:
    results = probe_all(ns, targets, BLOCKED_TIMEOUT_S, source)
    leaked = [r for r in results if r.ok]
    assert not leaked, f"expected no answer from {ns}: {_describe(leaked)}"


def test_granted_port_answers_through_the_tunnel(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
    assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)], ["thermostat tcp/443"])
    sources = {a.src for a in lab.arrivals("thermostat", time.time() - 5)}
    assert str(tech.tunnel_ip) in sources, "the device sees the session's tunnel address"


def test_tcp_grant_does_not_admit_udp_on_the_same_port(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["nas:tcp/8005"])])
    assert_open(tech.namespace, [lab.target("nas", "tcp", 8005)], ["nas tcp/8005"])
    since = time.time()
    assert_blocked(tech.namespace, [lab.target("nas", "udp", 8005)])
    assert not [a for a in lab.arrivals("nas", since) if a.proto == "udp"]


def test_port_range_grant_admits_its_range_only(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["camera:udp/5003-5006", "nas:tcp/8002-8004"])])
    assert_open(
        tech.namespace,
        [
            lab.target("camera", "udp", 5003),
            lab.target("camera", "udp", 5006),
            lab.target("nas", "tcp", 8002),
            lab.target("nas", "tcp", 8004),
        ],
        ["camera udp/5003", "camera udp/5006", "nas tcp/8002", "nas tcp/8004"],
    )
    assert_blocked(
        tech.namespace,
        [
            lab.target("camera", "udp", 5002),
            lab.target("camera", "udp", 5007),
            lab.target("nas", "tcp", 8001),
            lab.target("nas", "tcp", 8005),
        ],
    )


def test_other_port_and_other_device_are_blocked(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
    assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)])
    assert_blocked(
        tech.namespace,
        [
            lab.target("thermostat", "tcp", 80),
            lab.target("camera", "tcp", 554),
            lab.target("camera", "udp", 5000),
            lab.target("nas", "tcp", 8000),
        ],
    )
    # The same ports answer from the LAN: the firewall, not a dead service, said no.
    assert_open(lab.topo.router, [lab.target("thermostat", "tcp", 80)])
    assert_open(lab.topo.router, [lab.target("camera", "tcp", 554)])


def test_router_itself_is_unreachable_through_the_tunnel(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
    assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)])
    router_tunnel = lab.router_tunnel_addresses()
    assert str(ROUTER_TUNNEL_IP) in router_tunnel, f"router tunnel address: {router_tunnel}"
    addresses = [str(ROUTER_LAN_IP), str(ROUTER_TUNNEL_IP)]
    targets = [Target(a, p, port) for a in addresses for p, port in (("tcp", 22), ("udp", 53))]
    since = time.time()
    assert_blocked(tech.namespace, targets)
    assert not [a for a in lab.arrivals("router", since) if a.src == str(tech.tunnel_ip)]
    # A real listener is there: the LAN reaches it.
    device_ns = lab.topo.device_ns(lab.topo.device("thermostat"))
    assert_open(device_ns, [Target(str(ROUTER_LAN_IP), "tcp", 22)], ["router tcp/22"])


def test_no_exit_to_the_internet(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
    assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)])
    host = str(INTERNET_HOST_IP)
    since = time.time()
    assert_blocked(tech.namespace, [Target(host, "tcp", 80), Target(host, "udp", 53)])
    assert not lab.arrivals("internet", since)
    assert_open(lab.topo.router, [Target(host, "tcp", 80)], ["internet tcp/80"])


def test_other_technicians_tunnel_is_unreachable(live_lab: Lab) -> None:
    lab = live_lab
    one, two = lab.tech(1), lab.tech(2)
    lab.apply([lab.session(one, ["thermostat:tcp/443"]), lab.session(two, ["thermostat:tcp/443"])])
    assert_open(one.namespace, [lab.target("thermostat", "tcp", 443)])
    assert_open(two.namespace, [lab.target("thermostat", "tcp", 443)])
    peer = str(two.tunnel_ip)
    since = time.time()
    assert_blocked(one.namespace, [Target(peer, "tcp", 2222), Target(peer, "udp", 2222)])
    assert not lab.arrivals(two.name, since)


def test_lan_device_cannot_open_a_connection_to_the_technician(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
    assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)])  # replies do flow
    device_ns = lab.topo.device_ns(lab.topo.device("thermostat"))
    targets = [Target(str(tech.tunnel_ip), "tcp", 2222), Target(str(tech.tunnel_ip), "udp", 2222)]
    since = time.time()
    assert_blocked(device_ns, targets)
    assert not lab.arrivals(tech.name, since)


def test_ipv6_from_the_tunnel_is_dropped_without_an_ipv6_grant(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443", "nas:udp/8000"])])
    assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)])
    since = time.time()
    v6 = [lab.target("thermostat", "tcp", 443, family=6), lab.target("nas", "udp", 8000, 6)]
    assert_blocked(tech.namespace, v6)
    nas6 = str(lab.topo.device("nas").ip6)
    send_crafted(tech.namespace, str(tech.tunnel_ip6), nas6, 8000, "crafted-v6")
    time.sleep(0.3)
    assert not lab.arrivals("nas", since)
    assert not lab.arrivals("thermostat", since)
    # With an IPv6 grant the same packets pass: the drop above was the policy.
    lab.apply([lab.session(tech, ["thermostat:tcp/443@6"])])
    assert_open(tech.namespace, [v6[0]], ["thermostat tcp/443"])


def test_forged_source_of_another_session_never_arrives(live_lab: Lab) -> None:
    lab = live_lab
    one, two = lab.tech(1), lab.tech(2)
    lab.apply([lab.session(one, ["nas:udp/8000"]), lab.session(two, ["nas:udp/8000"])])
    assert_open(one.namespace, [lab.target("nas", "udp", 8000)])
    nas = str(lab.topo.device("nas").ip)
    since = time.time()
    send_crafted(one.namespace, str(two.tunnel_ip), nas, 8000, "forged")
    send_crafted(one.namespace, str(one.tunnel_ip), nas, 8000, "honest")
    time.sleep(0.3)
    sources = [a.src for a in lab.arrivals("nas", since)]
    assert str(one.tunnel_ip) in sources, "the crafted packet with its own source arrives"
    assert str(two.tunnel_ip) not in sources, "WireGuard must drop another session's source"


def _flow_in_background(
    ns: str, target: Target, **kwargs: Any
) -> tuple[threading.Thread, list[FlowResult]]:
    out: list[FlowResult] = []
    thread = threading.Thread(target=lambda: out.append(steady_flow(ns, target, **kwargs)))
    thread.start()
    return thread, out


def test_expiry_is_enforced_by_the_kernel_with_the_agent_killed(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lifetime = 4.0
    session = lab.session(tech, ["thermostat:tcp/443"], expires_in=lifetime)
    written = time.time()
    lab.apply([session])
    (kernel_expiry,) = lab.kernel_expiry_times()
    lab.stop_agent(signal.SIGKILL)
    killed = time.time()
    flow = steady_flow(
        tech.namespace, lab.target("thermostat", "tcp", 443), interval=0.05, max_seconds=10
    )
    assert flow.first_failure is not None, "access never ended"
    alive_after_kill = [r for r in flow.results if r.ok and r.started > killed]
    assert alive_after_kill, "access must keep working while the agent is dead"
    promised = written + lifetime
    lag = flow.first_failure - kernel_expiry
    print(
        f"\nkernel expiry {(kernel_expiry - promised) * 1000:+.0f} ms from the promised end; "
        f"first failed probe {lag * 1000:+.0f} ms after kernel expiry, "
        f"{(flow.first_failure - promised) * 1000:+.0f} ms from the promised end "
        f"({flow.successes} probes answered, agent SIGKILLed)"
    )
    assert promised - 1.0 <= kernel_expiry <= promised + 0.25, "lifetime rounded down, never up"
    assert -0.05 <= lag <= 1.0
    # Restarted on the same document, the agent must not bring the session back.
    lab.start_agent()
    lab.wait_applied()
    assert lab.tech_keys[tech.index].public not in lab.router_peers()
    assert not lab.grant_elements()
    assert_blocked(tech.namespace, [lab.target("thermostat", "tcp", 443)])


def test_revoke_cuts_a_running_flow(live_lab: Lab) -> None:
    lab = live_lab
    tech = lab.tech(1)
    lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
    thread, out = _flow_in_background(
        tech.namespace, lab.target("thermostat", "tcp", 443), interval=0.05, max_seconds=10
    )
    time.sleep(1.0)
    revoked = time.time()
    status = lab.apply([])
    thread.join(timeout=15)
    (flow,) = out
    assert flow.first_failure is not None, "the flow survived the revoke"
    assert any(r.ok for r in flow.results if r.started < revoked)
    lag = flow.first_failure - float(status["applied_at"])
    print(f"\nrevoke applied -> first failed probe: {lag * 1000:+.0f} ms")
    assert flow.first_failure - revoked < 2.0
    assert lab.tech_keys[tech.index].public not in lab.router_peers()
    assert not lab.grant_elements()


def test_restart_converges_to_exactly_the_new_state(live_lab: Lab) -> None:
    lab = live_lab
    one, two = lab.tech(1), lab.tech(2)
    lab.apply([lab.session(one, ["thermostat:tcp/443"]), lab.session(two, ["camera:tcp/554"])])
    lab.stop_agent(signal.SIGKILL)
    new = lab.session(two, ["nas:tcp/8003"])
    lab.write_desired([new])
    lab.start_agent()
    lab.wait_applied()
    lab.rejoin(two)
    peers = lab.router_peers()
    assert set(peers) == {new.public_key}, f"orphan peers: {peers}"
    assert str(two.tunnel_ip) + "/32" in peers[new.public_key]
    elements = {(k.tunnel_ip, k.device_ip, k.proto, k.first, k.last) for k in lab.grant_elements()}
    nas = str(lab.topo.device("nas").ip)
    assert elements == {(str(two.tunnel_ip), nas, "tcp", 8003, 8003)}
    assert_open(two.namespace, [lab.target("nas", "tcp", 8003)], ["nas tcp/8003"])
    assert_blocked(two.namespace, [lab.target("camera", "tcp", 554)])
    assert_blocked(one.namespace, [lab.target("thermostat", "tcp", 443)])


FW4 = """
table inet fw4 {
    set lan_admins {
        type ipv4_addr
        elements = { 192.168.77.50, 192.168.77.51 }
    }
    chain input {
        type filter hook input priority filter; policy accept;
        ip saddr @lan_admins tcp dport 22 accept
        tcp dport 2323 drop
    }
}
"""


def _fw4_snapshot(lab: Lab) -> str:
    """``nft -j list table inet fw4`` without handles (they are per-listing bookkeeping)."""
    data = lab.nft("list", "table", "inet", "fw4")
    items = [item for item in data["nftables"] if "metainfo" not in item]
    for item in items:
        for body in item.values():
            body.pop("handle", None)
    return json.dumps(items, sort_keys=True)


def test_coexists_with_an_existing_fw4_table(live_lab: Lab) -> None:
    lab = live_lab
    lab.stop_agent(signal.SIGTERM)
    lab.agent_teardown()
    lab.nft_load(FW4)
    try:
        before = _fw4_snapshot(lab)
        lab.start_agent()
        tech = lab.tech(1)
        lab.apply([lab.session(tech, ["thermostat:tcp/443"])])
        assert_open(tech.namespace, [lab.target("thermostat", "tcp", 443)])
        assert _fw4_snapshot(lab) == before, "apply changed fw4"
        lab.apply([])
        assert_blocked(tech.namespace, [lab.target("thermostat", "tcp", 443)])
        assert _fw4_snapshot(lab) == before, "revoke changed fw4"
        lab.stop_agent(signal.SIGTERM)
        lab.agent_teardown()
        assert not lab.nft_table_exists("ztb")
        assert _fw4_snapshot(lab) == before, "teardown changed fw4"
    finally:
        lab.nft_load("delete table inet fw4")
