"""End to end (issue 4): the real broker, an enrolled agent, people on the ``ztb`` CLI.

One lab for the module: the broker serves HTTPS in its namespace on the fake internet,
the router's agent enrolled with a one-time token and follows it over mTLS. Everything
is driven through ``ztb`` and ``wg-quick`` (see ``lab.broker_lab``) and checked with real
packets; latencies are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.broker_link.enroll import new_tls_key_and_csr
from broker import pki
from lab import demo_story, netns
from lab.bench.stats import Summary
from lab.broker_lab import BrokerLab, CliError, router_key, tls_get, tls_server_verdict
from lab.demo_dataplane import Story
from lab.demo_story import HOME, Plot, Step
from lab.harness import Lab
from lab.latency import (
    GRANTS,
    Cycle,
    close_access,
    measure,
    moment,
    open_access,
    target_of,
    wait_for_answer,
)
from lab.probes import Target, probe, steady_flow
from lab.technician import WIDENED
from lab.topology import HOME2_DEVICE, LAN2, ROUTER2_LAN_IP, TUNNEL_POOL2, Technician

pytestmark = pytest.mark.lab

HOME2 = "lab-home2"
THERMOSTAT = "thermostat:tcp/443"
REVOKE_BOUND_S = 1.0
APPROVE_BOUND_S = 2.0
LATENCY_RUNS = 30
LATENCY_MAX_S = 240.0  # inside the per-test timeout (300 s)


@pytest.fixture(scope="module")
def plot() -> Iterator[Plot]:
    """Broker bootstrapped and serving, home with devices, agent enrolled and running."""
    with Lab(technicians=2, homes=2, start_agent=False, connect_technicians=False) as lab:
        plot = Plot(Story(lab, print), BrokerLab(lab))
        for step in (demo_story.start_broker, demo_story.set_up_home, demo_story.enroll_agent):
            step(plot)
        plot.people["tech2"] = plot.broker.technician("tom@lab.example", lab.tech(2))
        assert plot.story.ok, plot.story.failures
        yield plot


def run_steps(plot: Plot, *steps: Step) -> None:
    plot.story.failures.clear()
    for step in steps:
        step(plot)
    assert plot.story.ok, plot.story.failures


def request(plot: Plot, who: str, home: str, grant: str) -> str:
    """``ztb session request`` as ``who`` for ``grant`` at ``home``, for 10 minutes."""
    return replace(plot.cli(who), home=home).request([grant], 600)


def connected_session(plot: Plot, who: str, duration_s: int) -> tuple[str, float]:
    """Request ``GRANTS``, approve and connect as ``who``; returns (session id, expires_at)."""
    people = plot.cli(who)
    session_id = people.request(GRANTS, duration_s)
    open_access(people, session_id)
    return session_id, moment(str(people.show(session_id)["expires_at"]))


def wait_state(plot: Plot, session_id: str, state: str, timeout: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    while time.monotonic() < deadline:
        shown = plot.broker.ztb_json(plot.person("owner"), "session", "show", session_id)
        if shown["state"] == state:
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{session_id} is {shown.get('state')}, not {state}")


def agent_long_polling(plot: Plot, timeout: float = 30.0) -> float:
    """Seconds until the broker holds the agent's long-poll again (its metrics say so)."""
    t0 = time.monotonic()
    ca_pem = plot.broker.ca_cert.read_text()
    while time.monotonic() - t0 < timeout:
        try:
            _, body = tls_get(plot.lab.topo.host, "/metrics", ca_pem)
        except OSError:
            body = ""
        if re.search(r"^ztb_agent_longpolls_waiting [1-9]", body, re.MULTILINE):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"the agent did not reconnect within {timeout} s")


def expiry_flow(plot: Plot, expires_at: float, who: str = "tech") -> float:
    """Seconds between ``expires_at`` and the first dropped probe of a steady flow."""
    techns = plot.lab.tech(1 if who == "tech" else 2)
    flow = steady_flow(
        techns.namespace, target_of(plot.lab, THERMOSTAT), interval=0.05, max_seconds=40
    )
    assert flow.successes > 0, "access worked before the expiry"
    assert flow.first_failure is not None, "access never ended"
    return flow.first_failure - expires_at


# ----------------------------------------------------------------------------- the story


def test_story_request_approve_only_the_grant_revoke_report(plot: Plot) -> None:
    run_steps(
        plot,
        demo_story.request_and_approve,
        demo_story.only_the_grant,
        demo_story.homeowner_revokes,
        demo_story.report_and_audit,
    )
    took = plot.story.measurements
    print(
        f"\napproval recorded -> connect {took['approval_to_connect_s'] * 1000:.0f} ms;"
        f" revoke recorded -> drop {took['revoke_to_drop_s'] * 1000:.0f} ms"
    )


def test_a_session_expires_on_its_own(plot: Plot) -> None:
    run_steps(plot, demo_story.session_expires)
    print(f"\nexpiry -> drop {plot.story.measurements['expiry_to_drop_s'] * 1000:+.0f} ms")


# ----------------------------------------------------------------------------- enrollment


def test_a_replayed_enrollment_token_is_refused(plot: Plot) -> None:
    broker, admin = plot.broker, plot.person("admin")
    token = str(broker.ztb_json(admin, "home", "enroll-token", HOME)["token"])
    first = broker.enroll_with(token, plot.lab.run_dir / "spare-agent")
    again = plot.lab.run_dir / "replayed-agent"
    with pytest.raises(RuntimeError, match="already used"):
        broker.enroll_with(token, again)
    assert not (again / "config.json").exists()
    exported = broker.ztb(admin, "audit", "export").stdout
    assert '"attempt":"agent.enroll"' in exported.replace(" ", "")
    broker.ztb(admin, "home", "revoke-agent", HOME, first["agent_id"])  # tidy: not running


def test_a_forged_client_certificate_is_refused(plot: Plot) -> None:
    lab, broker = plot.lab, plot.broker
    ca_pem = broker.ca_cert.read_text()
    real = broker.state_dir / "client.pem"
    status, _ = tls_get(lab.topo.router, "/v1/agent/state?after=-1&wait=0", ca_pem, real)
    assert status == 200, "the enrolled agent's own certificate works"
    forger = pki.create_ca(datetime.now(UTC))  # same subject name as the real CA, other key
    key, csr = new_tls_key_and_csr("forged")
    home_id = str(broker.ztb_json(plot.person("admin"), "home", "show", HOME)["id"])
    cert = pki.sign_agent_csr(forger, csr, home_id, broker.agent_id(), datetime.now(UTC))
    forged = plot.lab.run_dir / "forged.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    forged.write_text(pki.certificate_pem(cert) + key_pem)
    # The TLS layer itself refuses: the session ends right after the handshake, before any
    # request; with the real certificate (the control) it stays open, waiting for one.
    with pytest.raises(ssl.SSLEOFError):
        tls_server_verdict(lab.topo.router, ca_pem, forged)
    with pytest.raises(TimeoutError):
        tls_server_verdict(lab.topo.router, ca_pem, real, timeout=0.5)
    status, _ = tls_get(lab.topo.router, "/v1/agent/state?after=-1&wait=0", ca_pem)
    assert status == 401, "no certificate: nothing"


# ----------------------------------------------------------------------------- broker down


def test_broker_killed_mid_session_then_revoke_still_works(plot: Plot) -> None:
    broker, owner = plot.broker, plot.person("owner")
    techns = plot.lab.tech(1)
    target = target_of(plot.lab, THERMOSTAT)
    session_id, _ = connected_session(plot, "tech", 600)
    broker.kill_broker()
    assert probe(techns.namespace, target, timeout=1.0).ok, "access survives the broker crash"
    restarted = broker.start_broker()
    reconnected = agent_long_polling(plot)
    assert wait_for_answer(techns.namespace, target, timeout=2.0) is not None
    assert broker.ztb_json(owner, "session", "show", session_id)["state"] == "active"
    took = close_access(plot.cli(), session_id).to_drop
    print(
        f"\nbroker restarted in {restarted:.1f} s, agent back {reconnected:.1f} s later; "
        f"revoke recorded -> drop {took * 1000:.0f} ms"
    )
    assert took <= REVOKE_BOUND_S


def test_broker_down_across_an_expiry(plot: Plot) -> None:
    broker = plot.broker
    session_id, expires_at = connected_session(plot, "tech", 12)
    broker.kill_broker()
    try:
        lag = expiry_flow(plot, expires_at)
    finally:
        broker.start_broker()
    print(f"\nbroker down: access ended {lag * 1000:+.0f} ms from expires_at")
    assert -1.0 <= lag <= 1.0
    assert wait_state(plot, session_id, "ended")["end_reason"] == "expired"
    agent_long_polling(plot)


# ----------------------------------------------------------------------------- two homes


def widen(tech: Technician, config: Path, cidr: str) -> None:
    """Send ``cidr`` into the technician's tunnel too (with the lab's usual widening), so
    a cross attempt really enters it."""
    allowed = ",".join((*WIDENED, cidr))
    ifname = tech.wg_interface
    netns.run_in(
        tech.namespace, ["wg", "set", ifname, "peer", router_key(config), "allowed-ips", allowed]
    )
    netns.run_in(tech.namespace, ["ip", "route", "replace", cidr, "dev", ifname])


def peers(ns: str, ifname: str) -> set[str]:
    return set(netns.run_in(ns, ["wg", "show", ifname, "peers"]).stdout.split())


def test_two_homes_two_agents_two_technicians_no_cross_access(plot: Plot) -> None:
    broker, lab, admin, ann = plot.broker, plot.lab, plot.person("admin"), plot.person("owner")
    tina, tom = plot.person("tech"), plot.person("tech2")
    bert = broker.add_person("bert@lab.example", "homeowner")
    broker.ztb(
        admin, "home", "create", HOME2, "--owner", bert.email, "--lan", str(LAN2),
        "--router-ip", str(ROUTER2_LAN_IP), "--tunnel-pool", str(TUNNEL_POOL2),
    )  # fmt: skip
    broker.ztb(bert, "device", "add", HOME2, "lock", "--ip", str(HOME2_DEVICE.ip))
    broker.ztb(ann, "home", "policy", HOME, "--technician", tina.email)
    broker.ztb(bert, "home", "policy", HOME2, "--technician", tom.email)
    state2 = lab.run_dir / "agent2-state"
    broker.enroll_with(broker.enroll_token(HOME2), state2, second_home=True)
    broker.start_second_agent(state2)
    lock = Target(str(HOME2_DEVICE.ip), "tcp", 443)
    thermostat = target_of(lab, THERMOSTAT)

    # Nobody can even ask at, or approve for, the other home.
    with pytest.raises(CliError, match="404"):
        request(plot, "tech", HOME2, "lock:tcp/443")
    with pytest.raises(CliError, match="404"):
        request(plot, "tech2", HOME, THERMOSTAT)
    at_home2 = request(plot, "tech2", HOME2, "lock:tcp/443")
    with pytest.raises(CliError, match="404"):
        broker.ztb(ann, "session", "approve", at_home2)

    at_home1, _ = connected_session(plot, "tech", 600)
    broker.ztb(bert, "session", "approve", at_home2)
    config2 = broker.download_config(tom, lab.tech(2), at_home2)
    broker.tunnel_up(lab.tech(2), config2)  # its widening covers home 1's LAN ...
    widen(lab.tech(2), config2, str(LAN2))  # ... and now home 2's as well
    widen(lab.tech(1), tina.home / f"{lab.tech(1).wg_interface}.conf", str(LAN2))
    assert wait_for_answer(lab.tech(2).namespace, lock, timeout=5.0) is not None
    assert probe(lab.tech(1).namespace, thermostat, 2.0).ok, "tina reaches her grant"
    assert probe(lab.tech(2).namespace, lock, 2.0).ok, "tom reaches his grant"
    assert not probe(lab.tech(1).namespace, lock, 0.6).ok, "tina must not reach home 2"
    assert not probe(lab.tech(2).namespace, thermostat, 0.6).ok, "tom must not reach home 1"

    # Each router knows only its own home's technician.
    key1 = str(broker.ztb_json(tina, "session", "show", at_home1)["public_key"])
    key2 = str(broker.ztb_json(tom, "session", "show", at_home2)["public_key"])
    assert peers(lab.topo.router, lab.topo.router_wg) == {key1}
    assert peers(lab.topo.router2, lab.topo.router2_wg) == {key2}
    # Each agent's certificate yields its own home's state only.
    ca_pem = broker.ca_cert.read_text()
    status, body = tls_get(
        lab.topo.router2, "/v1/agent/state?after=-1&wait=0", ca_pem, state2 / "client.pem"
    )
    home2_id = broker.ztb_json(bert, "home", "show", HOME2)["id"]
    assert status == 200 and json.loads(body)["home_id"] == home2_id
    assert key1 not in body and str(lab.topo.device("thermostat").ip) not in body

    broker.ztb(ann, "session", "revoke", at_home1)
    broker.ztb(bert, "session", "revoke", at_home2)
    broker.ztb(ann, "home", "policy", HOME, "--technician", tina.email, "--technician", tom.email)


# ----------------------------------------------------------------------------- latency


def test_latency_over_many_runs(plot: Plot) -> None:
    """approve -> connect within 2 s and revoke -> drop within 1 s (issue 4), p50 and p99.

    Method (``lab.latency``, the same code as the benchmarks' rows), ``LATENCY_RUNS``
    support calls, everyone on the ``ztb`` CLI: the technician requests thermostat tcp/443
    and camera udp/5000; the homeowner runs ``ztb session approve``; the technician runs
    ``ztb session config`` (which waits until the router applied the session), stock
    ``wg-quick up``, and TCP connects to the thermostat until one is answered. Then a UDP
    flow (one datagram every 5 ms) runs to the camera, whose lab service logs each
    arrival; the homeowner runs ``ztb session revoke``; the first dropped datagram is the
    one after the last that reached the camera.

    Both bounds are timed from the broker's own record of the approval or revoke (the
    session's ``approved_at`` / ``ended_at``), not from the homeowner's CLI process start:
    that start-up (0.3-1 s of Python imports on a busy 2-core machine) is the caller's,
    and is printed separately. The technician's CLI run stays inside approve -> connect.
    With fewer than 100 runs, p99 is the slowest run.
    """
    lines: list[str] = []
    cycles = measure(plot.cli(), LATENCY_RUNS, LATENCY_MAX_S, out=lines.append)
    opened = Summary.of([c.opening.to_connect for c in cycles])
    closed = Summary.of([c.closing.to_drop for c in cycles])
    print("\n" + "\n".join([*lines, *_latency_lines(cycles, opened, closed)]))
    assert len(cycles) >= LATENCY_RUNS
    assert opened.median <= APPROVE_BOUND_S and opened.p99 <= APPROVE_BOUND_S
    assert closed.median <= REVOKE_BOUND_S and closed.p99 <= REVOKE_BOUND_S


def _latency_lines(cycles: list[Cycle], opened: Summary, closed: Summary) -> list[str]:
    def line(title: str, summary: Summary) -> str:
        return (
            f"{title}: p50 {summary.median * 1e3:.0f} ms, p99 {summary.p99 * 1e3:.0f} ms "
            f"(min {summary.minimum * 1e3:.0f}, max {summary.maximum * 1e3:.0f}, "
            f"n={summary.trials})"
        )

    return [
        line("approval recorded -> first connection (bound 2 s)", opened),
        line("revoke recorded -> flow dropped (bound 1 s)", closed),
        line("homeowner's approve CLI: start -> broker's record",
             Summary.of([c.opening.caller_start_up for c in cycles])),
        line("homeowner's revoke CLI: start -> broker's record",
             Summary.of([c.closing.caller_start_up for c in cycles])),
        line("approve CLI start -> first connection (start-up included)",
             Summary.of([c.opening.connected - c.opening.call_started for c in cycles])),
        line("revoke CLI start -> flow dropped (start-up included)",
             Summary.of([c.closing.first_drop - c.closing.call_started for c in cycles])),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- revoked agent


def test_a_revoked_agent_gets_nothing_but_its_grants_still_expire(plot: Plot) -> None:
    """Last: the agent stays cut off afterwards."""
    broker, admin, owner = plot.broker, plot.person("admin"), plot.person("owner")
    session_id, expires_at = connected_session(plot, "tech", 15)
    agent_id = broker.agent_id()
    broker.ztb(admin, "home", "revoke-agent", HOME, agent_id)
    shown = broker.ztb(admin, "home", "show", HOME).stdout
    assert "revoked" in shown
    # A new approval no longer reaches the router (and no config names a revoked router).
    tina = plot.person("tech")
    later = request(plot, "tech", HOME, THERMOSTAT)
    broker.ztb(owner, "session", "approve", later)
    with pytest.raises(CliError, match="no public key"):
        # no router will apply it, so do not wait; tech1's tunnel stays up
        broker.download_config(tina, plot.lab.tech(2), later, wait_s=0)
    time.sleep(1.0)  # what a woken long-poll would have needed, several times over
    key = str(broker.ztb_json(owner, "session", "show", later)["public_key"])
    assert key not in plot.lab.router_peers()
    assert broker.ztb_json(owner, "session", "show", later)["state"] == "approved"  # never active
    # The grant it already had still works, then ends on time.
    lag = expiry_flow(plot, expires_at)
    print(f"\nrevoked agent: existing grant ended {lag * 1000:+.0f} ms from expires_at")
    assert -1.0 <= lag <= 1.0
    assert wait_state(plot, session_id, "ended")["end_reason"] == "expired"
    with pytest.raises(CliError, match="already revoked"):
        broker.ztb(admin, "home", "revoke-agent", HOME, agent_id)
    assert plot.lab.agent_running(), "the agent keeps enforcing; it only stopped fetching"
