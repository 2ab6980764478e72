"""The data-plane demo as a story: grant, probe, block, expire with the agent killed.

Each step is one small function taking the ``Story``; ``STEPS`` is the running order, so a
later demo (broker + enrollment) can put its own steps in front or behind.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .harness import Lab
from .probes import Target, probe_all, send_crafted, steady_flow
from .topology import INTERNET_HOST_IP, ROUTER_LAN_IP

EXPIRY_LIFETIME_S = 4.0


@dataclass
class Story:
    """Printed steps with a ✓ or ✗ each; ``ok`` is False once any expectation failed."""

    lab: Lab
    out: Callable[[str], None] = print
    failures: list[str] = field(default_factory=list)
    measurements: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def finish(self, started: float) -> dict[str, Any]:
        """Print the verdict line; the summary a caller (CLI, test) acts on."""
        elapsed = time.monotonic() - started
        verdict = "all expectations held" if self.ok else f"{len(self.failures)} FAILED"
        self.out(f"\n{verdict} ({elapsed:.1f} s)")
        return {
            "ok": self.ok,
            "failures": self.failures,
            "measurements": self.measurements,
            "seconds": elapsed,
        }

    def title(self, text: str) -> None:
        self.out(f"\n== {text}")

    def check(self, passed: bool, text: str) -> bool:
        self.out(f"  {'✓' if passed else '✗'} {text}")
        if not passed:
            self.failures.append(text)
        return passed

    def expect(self, ns_label: str, ns: str, targets: Sequence[Target], answer: bool) -> None:
        timeout = 2.0 if answer else 0.6
        for result in probe_all(ns, targets, timeout):
            got = result.reply or result.error
            if answer:
                text = f"{ns_label} -> {result.target}: answered {got!r}"
            else:
                text = f"{ns_label} -> {result.target}: blocked ({got})"
            self.check(result.ok == answer, text)


def grant_thermostat(story: Story) -> None:
    lab = story.lab
    story.title("Homeowner approves tech1: thermostat tcp/443, tech2: nas udp/8000 (10 min)")
    t0 = time.monotonic()
    status = lab.apply(
        [
            lab.session(lab.tech(1), ["thermostat:tcp/443"], expires_in=600),
            lab.session(lab.tech(2), ["nas:udp/8000"], expires_in=600),
        ]
    )
    took = time.monotonic() - t0
    story.measurements["apply_s"] = took
    story.check(
        status.get("revision") == lab.revision,
        f"agent applied revision {lab.revision} in {took * 1000:.0f} ms",
    )


def granted_port_answers(story: Story) -> None:
    lab = story.lab
    story.title("What gets through the tunnel")
    story.expect("tech1", lab.tech(1).namespace, [lab.target("thermostat", "tcp", 443)], True)
    story.expect("tech2", lab.tech(2).namespace, [lab.target("nas", "udp", 8000)], True)


def everything_else_is_blocked(story: Story) -> None:
    lab = story.lab
    tech = lab.tech(1)
    story.title("What is blocked")
    targets = [
        lab.target("thermostat", "tcp", 80),
        lab.target("thermostat", "udp", 443),
        lab.target("camera", "tcp", 554),
        lab.target("nas", "udp", 8000),
        Target(str(ROUTER_LAN_IP), "tcp", 22),
        Target(str(ROUTER_LAN_IP), "udp", 53),
        Target(str(INTERNET_HOST_IP), "tcp", 80),
        Target(str(lab.tech(2).tunnel_ip), "tcp", 2222),
        lab.target("thermostat", "tcp", 443, family=6),
    ]
    story.expect("tech1", tech.namespace, targets, False)
    device_ns = lab.topo.device_ns(lab.topo.device("thermostat"))
    story.expect("thermostat", device_ns, [Target(str(tech.tunnel_ip), "tcp", 2222)], False)


def forged_source_is_dropped(story: Story) -> None:
    lab = story.lab
    one, two = lab.tech(1), lab.tech(2)
    story.title("tech1 forges tech2's tunnel address towards nas udp/8000 (tech2's grant)")
    since = time.time()
    nas = str(lab.topo.device("nas").ip)
    send_crafted(one.namespace, str(two.tunnel_ip), nas, 8000, "forged")
    time.sleep(0.3)
    forged = [a for a in lab.arrivals("nas", since) if a.src == str(two.tunnel_ip)]
    story.check(not forged, "WireGuard cryptokey routing dropped it: nothing arrived at nas")


def expiry_with_agent_killed(story: Story) -> None:
    lab = story.lab
    tech = lab.tech(1)
    story.title(f"A {EXPIRY_LIFETIME_S:.0f} s grant, then the agent is SIGKILLed")
    written = time.time()
    lab.apply([lab.session(tech, ["thermostat:tcp/443"], expires_in=EXPIRY_LIFETIME_S)])
    (kernel_expiry,) = lab.kernel_expiry_times()
    early = written + EXPIRY_LIFETIME_S - kernel_expiry
    story.check(
        0 <= early <= 1.0, f"kernel element expires {early * 1000:.0f} ms before the promised end"
    )
    lab.stop_agent(signal.SIGKILL)
    story.check(not lab.agent_running(), "agent killed (SIGKILL): nothing can clean up")
    flow = steady_flow(tech.namespace, lab.target("thermostat", "tcp", 443), max_seconds=10)
    story.check(flow.successes > 0, f"{flow.successes} probes answered while the grant lived")
    if flow.first_failure is None:
        story.check(False, "access ended on its own")
        return
    lag = flow.first_failure - kernel_expiry
    story.measurements["expiry_to_first_drop_s"] = lag
    text = f"access ended on its own: first dropped probe {lag * 1000:.0f} ms after expiry"
    story.check(0 <= lag <= 1.0, text)


def restarted_agent_cleans_up(story: Story) -> None:
    lab = story.lab
    story.title("The agent comes back")
    t0 = time.monotonic()
    lab.start_agent()
    peer = lab.tech_keys[1].public
    deadline = t0 + 10
    while peer in lab.router_peers() and time.monotonic() < deadline:
        time.sleep(0.1)
    took = time.monotonic() - t0
    story.check(peer not in lab.router_peers(), f"expired peer removed {took:.1f} s after start")
    story.check(not lab.grant_elements(), "no grant left in table inet ztb")


STEPS: tuple[Callable[[Story], None], ...] = (
    grant_thermostat,
    granted_port_answers,
    everything_else_is_blocked,
    forged_source_is_dropped,
    expiry_with_agent_killed,
    restarted_agent_cleans_up,
)


def run(out: Callable[[str], None] = print, prefix: str | None = None) -> dict[str, Any]:
    """Build a lab, tell the story, tear the lab down; the summary says what failed."""
    t0 = time.monotonic()
    with Lab(prefix) as lab:
        out(f"lab {lab.topo.prefix}: namespaces {', '.join(lab.topo.namespaces)}")
        story = Story(lab, out)
        for step in STEPS:
            step(story)
    return story.finish(t0)
