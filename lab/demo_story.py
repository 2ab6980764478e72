"""The whole story with real packets: broker, enrollment, people, approval, revoke, expiry.

``ztb lab demo`` runs ``STEPS`` in order against a fresh lab: the real broker in its own
namespace on the fake internet, the agent enrolled with a one-time token, and every
person acting through the ``ztb`` CLI (technicians with stock ``wg-quick``). Each step
prints what it did and a ✓ or ✗ per expectation; any ✗ makes the demo exit non-zero.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .broker_lab import BrokerLab, Person
from .demo_dataplane import Story
from .harness import Lab
from .latency import GRANTS, CliPeople, close_access, moment, open_access, target_of
from .probes import Target, steady_flow
from .topology import INTERNET_HOST_IP, LAN, ROUTER_LAN_IP, ROUTER_WAN_IP, TUNNEL_POOL, WG_PORT

HOME = "lab-home"
SHORT_SESSION_S = 15
REVOKE_BOUND_S = 1.0
APPROVE_BOUND_S = 2.0


@dataclass
class Plot:
    """What the steps share: the printed story, the running product, the cast."""

    story: Story
    broker: BrokerLab
    people: dict[str, Person] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)

    @property
    def lab(self) -> Lab:
        return self.broker.lab

    def person(self, name: str) -> Person:
        return self.people[name]

    def cli(self, who: str = "tech") -> CliPeople:
        """The homeowner and technician ``who`` (tech: technician 1, tech2: 2) on the CLI."""
        techns = self.lab.tech(1 if who == "tech" else 2)
        return CliPeople(self.broker, self.person("owner"), self.person(who), techns, HOME)


def start_broker(plot: Plot) -> None:
    story, broker = plot.story, plot.broker
    story.title(f"Operator bootstraps the broker on {broker.topo.broker_url}")
    plot.people["admin"] = broker.bootstrap()
    story.check(broker.ca_cert.exists(), f"CA written to {broker.ca_cert}")
    took = broker.start_broker()
    story.check(broker.answers(), f"ztb broker serve answers over HTTPS after {took:.1f} s")


def set_up_home(plot: Plot) -> None:
    story, broker = plot.story, plot.broker
    admin = plot.person("admin")
    story.title("Admin creates a homeowner, a technician and the home with three devices")
    plot.people["owner"] = broker.add_person("ann@lab.example", "homeowner")
    plot.people["tech"] = broker.technician("tina@lab.example", plot.lab.tech(1))
    broker.ztb(
        admin, "home", "create", HOME, "--owner", "ann@lab.example", "--lan", str(LAN),
        "--router-ip", str(ROUTER_LAN_IP), "--tunnel-pool", str(TUNNEL_POOL),
    )  # fmt: skip
    for device in plot.lab.topo.devices:
        broker.ztb(plot.person("owner"), "device", "add", HOME, device.name, "--ip", str(device.ip))
    listed = broker.ztb(plot.person("owner"), "device", "list", HOME).stdout
    story.check(all(d.name in listed for d in plot.lab.topo.devices), "devices listed")


def enroll_agent(plot: Plot) -> None:
    story, broker = plot.story, plot.broker
    story.title("Admin mints a one-time token; the router enrolls and follows the broker")
    enrolled = broker.enroll_agent(HOME)
    story.check(
        enrolled["home_id"].startswith("home_"),
        f"agent {enrolled['agent_id']} enrolled, certificate until "
        f"{enrolled['certificate_expires_at'][:19]}",
    )
    broker.start_agent()
    story.check(plot.lab.agent_running(), "ztb agent run --state-dir applied the first state")
    shown = broker.ztb(plot.person("admin"), "home", "show", HOME).stdout
    story.check(enrolled["agent_id"] in shown, "ztb home show lists the agent and its expiry")


def request_and_approve(plot: Plot) -> None:
    story, broker, people = plot.story, plot.broker, plot.cli()
    story.title("Technician requests thermostat tcp/443 and camera udp/5000 for 30 min "
                "(key made on the laptop)")  # fmt: skip
    session_id = people.request(GRANTS, 30 * 60)
    plot.sessions["main"] = session_id
    shown = broker.ztb_json(people.tech, "session", "show", session_id)
    story.check(shown["state"] == "requested", f"{session_id} is requested")
    story.check(shown["key_origin"] == "technician", "only the public key went to the broker")
    story.title("Homeowner approves; technician downloads the config and runs wg-quick up")
    opening = open_access(people, session_id)
    story.measurements["approval_to_connect_s"] = opening.to_connect
    story.measurements["approve_cli_s"] = opening.caller_start_up
    # Timed from the broker's own record of the approval; the homeowner's CLI start-up
    # before it is reported, not counted (the technician's CLI run is counted).
    story.check(
        opening.to_connect <= APPROVE_BOUND_S,
        f"first connection {opening.to_connect * 1000:.0f} ms after the broker recorded the "
        f"approval (bound {APPROVE_BOUND_S:.0f} s; homeowner's CLI before that "
        f"{opening.caller_start_up * 1000:.0f} ms)",
    )
    state = broker.ztb_json(people.owner, "session", "show", session_id)["state"]
    story.check(state == "active", f"the agent reported it applied: session {state}")


def only_the_grant(plot: Plot) -> None:
    story, lab = plot.story, plot.lab
    ns = lab.tech(1).namespace
    story.title("Through the tunnel: thermostat tcp/443 and camera udp/5000 only")
    plot.cli().widen()  # so the blocked probes below really enter the tunnel
    story.expect("tech1", ns, [target_of(lab, grant) for grant in GRANTS], answer=True)
    blocked = [
        lab.target("thermostat", "tcp", 80),
        lab.target("camera", "tcp", 554),
        lab.target("nas", "tcp", 8000),
    ]
    story.expect("tech1", ns, blocked, answer=False)
    story.expect("tech1", ns, [Target(str(ROUTER_LAN_IP), "tcp", 22)], answer=False)
    story.expect("tech1", ns, [Target(str(INTERNET_HOST_IP), "tcp", 80)], answer=False)


def homeowner_revokes(plot: Plot) -> None:
    story, broker, people = plot.story, plot.broker, plot.cli()
    session_id = plot.sessions["main"]
    story.title("Homeowner revokes while the technician's datagrams keep coming")
    closing = close_access(people, session_id)
    story.measurements["revoke_to_drop_s"] = closing.to_drop
    story.measurements["revoke_cli_s"] = closing.caller_start_up
    story.check(closing.arrived > 0, f"{closing.arrived} datagrams reached the camera first")
    story.check(
        closing.to_drop <= REVOKE_BOUND_S,
        f"flow dropped {closing.to_drop * 1000:.0f} ms after the broker recorded the revoke "
        f"(bound {REVOKE_BOUND_S:.0f} s; homeowner's CLI before that "
        f"{closing.caller_start_up * 1000:.0f} ms)",
    )
    targets = [target_of(plot.lab, grant) for grant in GRANTS]
    story.expect("tech1", plot.lab.tech(1).namespace, targets, answer=False)
    state = broker.ztb_json(people.owner, "session", "show", session_id)
    story.check(state["end_reason"] == "revoked", "session ended (revoked)")


def session_expires(plot: Plot) -> None:
    story, broker, people = plot.story, plot.broker, plot.cli()
    story.title(f"A second session of {SHORT_SESSION_S} s ends on its own")
    session_id = people.request(GRANTS[:1], SHORT_SESSION_S)
    plot.sessions["short"] = session_id
    opening = open_access(people, session_id)
    expires_at = moment(broker.ztb_json(people.owner, "session", "show", session_id)["expires_at"])
    lifetime = expires_at - opening.recorded
    story.check(
        abs(lifetime - SHORT_SESSION_S) < 1,
        f"connected; expires at {datetime.fromtimestamp(expires_at):%H:%M:%S}, "
        f"{lifetime:.1f} s after the approval",
    )
    target = target_of(plot.lab, GRANTS[0])
    flow = steady_flow(people.technician.namespace, target, interval=0.05, max_seconds=30)
    if flow.first_failure is None:
        story.check(False, "access ended on its own")
        return
    lag = flow.first_failure - expires_at
    story.measurements["expiry_to_drop_s"] = lag
    story.check(-1.0 <= lag <= 1.0, f"access ended {lag * 1000:+.0f} ms from expires_at")
    deadline = time.monotonic() + 15
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = broker.ztb_json(people.owner, "session", "show", session_id)
        if state["state"] == "ended":
            break
        time.sleep(0.5)
    story.check(state.get("end_reason") == "expired", "the broker recorded it as expired")


def report_and_audit(plot: Plot) -> None:
    story, broker = plot.story, plot.broker
    story.title("Homeowner reads the report; admin verifies the audit chain")
    session_id = plot.sessions["main"]
    report = broker.ztb(plot.person("owner"), "session", "report", session_id).stdout
    for line in report.strip().splitlines():
        plot.story.out(f"    {line}")
    data = broker.ztb_json(plot.person("owner"), "session", "report", session_id)
    packets = sum(int(g["packets"]) for g in data["grants"])
    story.check("session.revoked" in report or "session.ended" in report, "timeline shows the end")
    story.check(packets > 0, f"counters from the router: {packets} packets on the grant")
    saved = plot.person("owner").home / "report.json"  # the homeowner's witness copy
    saved.write_text(json.dumps(data))
    verified = broker.ztb(
        plot.person("admin"), "audit", "verify",
        "--public-key", broker.audit_public_key, "--against", str(saved),
    ).stdout.strip()  # fmt: skip
    story.check(verified.startswith("audit chain ok") and "pinned key" in verified, verified)


Step = Callable[[Plot], None]
STEPS: tuple[Step, ...] = (
    start_broker,
    set_up_home,
    enroll_agent,
    request_and_approve,
    only_the_grant,
    homeowner_revokes,
    session_expires,
    report_and_audit,
)


def run(out: Callable[[str], None] = print, prefix: str | None = None) -> dict[str, Any]:
    """Build a lab, tell the whole story, tear the lab down; the summary says what failed."""
    t0 = time.monotonic()
    with Lab(prefix, technicians=1, start_agent=False, connect_technicians=False) as lab:
        out(f"lab {lab.topo.prefix}: router {ROUTER_WAN_IP}:{WG_PORT}, namespaces "
            f"{', '.join(lab.topo.namespaces)}")  # fmt: skip
        plot = Plot(Story(lab, out), BrokerLab(lab))
        try:
            for step in STEPS:
                step(plot)
        except Exception as exc:  # one failed command ends the story, clearly
            plot.story.check(False, f"{type(exc).__name__}: {exc}")
    return plot.story.finish(t0)
