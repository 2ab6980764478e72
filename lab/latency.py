"""How fast approval opens access and revocation closes it, end to end through the product.

One ``access_cycle`` is what a real support call does: the technician requests
(``ztb session request``), the homeowner approves (``ztb session approve``), the
technician downloads the config and runs ``wg-quick up``, connects; then the homeowner
revokes while a probe flow runs. Times are wall-clock and conservative:

* approve -> connect: from the moment the homeowner runs ``approve`` until the first TCP
  connection to the device answers (includes the CLI start-up, the agent's long-poll
  wake and apply, the config download, ``wg-quick up`` and the WireGuard handshake);
* revoke -> drop: from the moment the homeowner runs ``revoke`` until the first probe of
  the final failing run (``probes.steady_flow``), i.e. the CLI start-up is included.

``measure`` runs a bounded number of cycles; ``lab.bench`` and the lab tests share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from netpolicy.grants import GrantSpec

from .bench.stats import Summary
from .broker_lab import BrokerLab, Person
from .probes import FlowResult, Target, probe, steady_flow
from .topology import Technician

CONNECT_TIMEOUT_S = 10.0
FLOW_INTERVAL_S = 0.02


@dataclass(frozen=True, slots=True)
class Cycle:
    session_id: str
    opening: Opening
    revoke_to_drop_s: float


@dataclass(frozen=True, slots=True)
class Latencies:
    approve_to_connect: Summary  # from the approve command's start
    approval_to_connect: Summary  # from the approve command's answer
    revoke_to_drop: Summary

    def lines(self) -> list[str]:
        return [
            _line("approve command -> first connection", self.approve_to_connect),
            _line("approval answer -> first connection", self.approval_to_connect),
            _line("revoke command -> flow dropped", self.revoke_to_drop),
        ]


def _line(title: str, summary: Summary) -> str:
    return (
        f"{title}: p50 {summary.median * 1000:.0f} ms, p99 {summary.p99 * 1000:.0f} ms "
        f"(min {summary.minimum * 1000:.0f}, max {summary.maximum * 1000:.0f}, n={summary.trials})"
    )


def request(lab: BrokerLab, tech: Person, home: str, grant: str, duration: str) -> str:
    """``ztb session request`` as the technician (key pair made on their machine)."""
    out = lab.ztb(
        tech, "session", "request", "--home", home, "--grant", grant,
        "--duration", duration, "--reason", "lab support call",
    ).stdout  # fmt: skip
    return out.strip()


def wait_for_answer(ns: str, target: Target, timeout: float = CONNECT_TIMEOUT_S) -> float | None:
    """Probe until the target answers; the time of the first answer, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe(ns, target, timeout=0.25)
        if result.ok:
            return result.started + result.elapsed
        time.sleep(max(0.0, 0.02 - result.elapsed))
    return None


@dataclass(frozen=True, slots=True)
class Opening:
    """Seconds from the homeowner running ``approve`` to each step of the technician."""

    approved: float  # the approve command returned (approval committed, agent woken)
    configured: float  # ``ztb session config`` wrote the wg-quick file
    tunnel_up: float  # ``wg-quick up`` returned
    connected: float  # first answered TCP connection to the device

    @property
    def after_approval(self) -> float:
        """From the approval answer to the first connection: the technician's part."""
        return self.connected - self.approved


def approve_and_connect(
    lab: BrokerLab, owner: Person, tech: Person, techns: Technician, session_id: str, target: Target
) -> Opening:
    """The homeowner approves; the technician downloads the config, runs wg-quick up and
    connects at once. Times are from the start of the approve command."""
    started = time.time()
    lab.ztb(owner, "session", "approve", session_id)
    approved = time.time()
    config = lab.download_config(tech, techns, session_id)
    configured = time.time()
    lab.tunnel_up(techns, config)
    tunnel_up = time.time()
    answered = wait_for_answer(techns.namespace, target)
    if answered is None:
        raise AssertionError(f"{target} never answered after approving {session_id}")
    return Opening(
        approved - started, configured - started, tunnel_up - started, answered - started
    )


def revoke_during_flow(
    lab: BrokerLab, owner: Person, techns: Technician, session_id: str, target: Target
) -> tuple[float, FlowResult]:
    """Seconds from the homeowner's ``revoke`` to the first dropped probe of a steady flow."""
    flows: list[FlowResult] = []
    flowing = threading.Thread(
        target=lambda: flows.append(
            steady_flow(techns.namespace, target, interval=FLOW_INTERVAL_S, max_seconds=15)
        ),
        daemon=True,
    )
    flowing.start()
    time.sleep(0.3)  # the flow is established before the revoke
    started = time.time()
    lab.ztb(owner, "session", "revoke", session_id, "--reason", "done")
    flowing.join(timeout=20)
    if not flows or flows[0].first_failure is None:
        raise AssertionError(f"the probe flow to {target} survived revoking {session_id}")
    return flows[0].first_failure - started, flows[0]


def target_of(lab: BrokerLab, grant: str) -> Target:
    """Where to probe for ``thermostat:tcp/443``: the device's lab address, first port."""
    spec = GrantSpec.parse(grant)
    return lab.lab.target(spec.device, spec.proto, spec.ports.first)


def access_cycle(
    lab: BrokerLab, owner: Person, tech: Person, techns: Technician, home: str, grant: str
) -> Cycle:
    target = target_of(lab, grant)
    session_id = request(lab, tech, home, grant, "10m")
    opened = approve_and_connect(lab, owner, tech, techns, session_id, target)
    closed, _ = revoke_during_flow(lab, owner, techns, session_id, target)
    return Cycle(session_id, opened, closed)


def measure(
    lab: BrokerLab,
    owner: Person,
    tech: Person,
    techns: Technician,
    home: str,
    grant: str = "thermostat:tcp/443",
    runs: int = 20,
    max_seconds: float = 150.0,
    out: Callable[[str], None] = lambda _: None,
) -> Latencies:
    """``runs`` access cycles (fewer if ``max_seconds`` runs out), summarised."""
    cycles: list[Cycle] = []
    deadline = time.monotonic() + max_seconds
    for index in range(runs):
        cycle = access_cycle(lab, owner, tech, techns, home, grant)
        cycles.append(cycle)
        out(f"  run {index + 1:2d}: {describe(cycle.opening)}, revoke->drop "
            f"{cycle.revoke_to_drop_s * 1000:.0f} ms")  # fmt: skip
        if time.monotonic() > deadline:
            break
    return Latencies(
        Summary.of([c.opening.connected for c in cycles]),
        Summary.of([c.opening.after_approval for c in cycles]),
        Summary.of([c.revoke_to_drop_s for c in cycles]),
    )


def describe(opening: Opening) -> str:
    return (
        f"approve->connect {opening.connected * 1000:.0f} ms (approved "
        f"{opening.approved * 1000:.0f}, config {opening.configured * 1000:.0f}, "
        f"wg-quick up {opening.tunnel_up * 1000:.0f})"
    )
