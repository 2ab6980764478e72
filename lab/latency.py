"""How fast approval opens access and revocation closes it, through the running product.

The one measurement behind the lab tests and the demo story (people on the ``ztb`` CLI,
``CliPeople``) and the benchmarks (people on the HTTPS API, ``lab.bench.product``). One
``cycle`` is a support call: the technician requests a session with ``GRANTS`` (key pair
made on their side), then

* **opening**: the homeowner approves; the technician waits for the session to be
  ``active`` and downloads the wg-quick config (as ``ztb session config`` does), runs
  stock ``wg-quick up`` and opens TCP connections to the first grant until one is
  answered (the first includes the WireGuard handshake);
* **closing**: a UDP flow (one datagram every ``FLOW_PERIOD_S``) runs through the tunnel
  to the second grant's device, whose lab service logs each arrival with its time; the
  homeowner revokes. The first dropped datagram is the one after the last that arrived
  (device side).

Every moment is wall-clock time (``time.time()``), which all lab namespaces share, so
each step can be read from the moment the caller started, the moment the **broker
recorded** the approval or revoke (the session's ``approved_at`` / ``ended_at``, in
microseconds, taken when the broker began handling the call), or the moment the call
returned. The agent's own log (``ts=``, ms) says when it was woken and had applied; it
runs in parallel with the technician's steps.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from netpolicy.grants import GrantSpec

from . import netns, technician
from .broker_lab import BrokerLab, Person, router_key
from .harness import Lab
from .probes import Target, probe
from .topology import Technician

GRANTS = ("thermostat:tcp/443", "camera:udp/5000")  # connect to the first, flow to the second
CONNECT_TIMEOUT_S = 10.0
FLOW_PERIOD_S = 0.005
FLOW_WARMUP_S = 0.3
FLOW_QUIET_S = 0.3  # after the revoke, the flow stops once no echo came back this long
FLOW_MAX_S = 5.0
AGENT_LOG_WAIT_S = 3.0
_AGENT_EVENT = re.compile(r"^ts=(?P<ts>[\d.]+) event=(?P<event>\w+)(?P<rest>.*)$")


class People(Protocol):
    """How the homeowner and the technician act: through the CLI or the API."""

    @property
    def lab(self) -> Lab: ...

    @property
    def technician(self) -> Technician: ...

    def request(self, grants: Sequence[str], duration_s: int) -> str:
        """The technician asks (key pair made on their side); the session id."""

    def approve(self, session_id: str) -> None: ...

    def revoke(self, session_id: str) -> None: ...

    def show(self, session_id: str) -> Mapping[str, Any]:
        """The session as the broker holds it (``approved_at``, ``ended_at``, ...)."""

    def fetch_config(self, session_id: str) -> Path:
        """The technician's wg-quick file, private key filled in; like ``ztb session
        config``, waits until the router applied the session."""

    def tunnel_up(self, config: Path) -> None: ...

    def tunnel_down(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Opening:
    """Moments (wall clock) of one approval, up to the first answered connection."""

    call_started: float  # the homeowner's approve began (CLI: the process start)
    recorded: float  # the broker's record of the approval (``approved_at``)
    call_returned: float
    agent_woken: float
    agent_applied: float
    configured: float  # the technician has the wg-quick file
    tunnel_up: float  # ``wg-quick up`` returned
    connected: float  # first answered TCP connection to the device

    @property
    def to_connect(self) -> float:
        """From the broker's record of the approval to the first connection."""
        return self.connected - self.recorded

    @property
    def caller_start_up(self) -> float:
        """From the approve call's start to the broker's record (CLI start-up, request)."""
        return self.recorded - self.call_started


@dataclass(frozen=True, slots=True)
class Closing:
    """Moments (wall clock) of one revoke, up to the first datagram that did not arrive."""

    call_started: float
    recorded: float  # the broker's record of the revoke (``ended_at``)
    call_returned: float
    agent_woken: float
    agent_applied: float
    last_arrival: float  # device side: the last datagram that got through
    first_drop: float  # send time of the first datagram that did not
    sent: int
    arrived: int

    @property
    def to_drop(self) -> float:
        """From the broker's record of the revoke to the first dropped datagram."""
        return self.first_drop - self.recorded

    @property
    def caller_start_up(self) -> float:
        return self.recorded - self.call_started


def after(moments: Opening | Closing, zero: float) -> dict[str, float]:
    """Every moment of an opening or closing, in seconds after ``zero``."""
    return {k: v - zero for k, v in asdict(moments).items() if isinstance(v, float)}


@dataclass(frozen=True, slots=True)
class Cycle:
    session_id: str
    opening: Opening
    closing: Closing


def target_of(lab: Lab, grant: str) -> Target:
    """Where to probe for ``thermostat:tcp/443``: the device's lab address, first port."""
    spec = GrantSpec.parse(grant)
    return lab.target(spec.device, spec.proto, spec.ports.first)


def wait_for_answer(ns: str, target: Target, timeout: float = CONNECT_TIMEOUT_S) -> float | None:
    """Probe until the target answers; the time of the first answer, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe(ns, target, timeout=0.25)
        if result.ok:
            return result.started + result.elapsed
        time.sleep(max(0.0, 0.02 - result.elapsed))
    return None


def moment(text: str) -> float:
    """An API time (RFC 3339, ``Z``) as wall-clock seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def agent_times(agent_log: Path, since: float) -> tuple[float, float]:
    """When the agent got the next document after ``since`` and when it had applied it."""
    deadline = time.monotonic() + AGENT_LOG_WAIT_S
    while time.monotonic() < deadline:
        events = []
        for line in agent_log.read_text().splitlines():
            match = _AGENT_EVENT.match(line)
            if match and float(match["ts"]) >= since - 0.001:
                events.append((float(match["ts"]), match["event"], match["rest"]))
        woken = next((e for e in events if e[1] == "desired_state"), None)
        if woken is not None:
            applies = (e for e in events if e[1] == "applied" and e[0] >= woken[0])
            applied = next((e for e in applies if "reason=document" in e[2]), None)
            if applied is not None:
                return woken[0], applied[0]
        time.sleep(0.02)
    raise RuntimeError(f"the agent logged no apply after {since:.3f}")


def open_access(people: People, session_id: str, grant: str = GRANTS[0]) -> Opening:
    """The homeowner approves; the technician fetches the config, brings the tunnel up
    and connects to ``grant`` at once."""
    target = target_of(people.lab, grant)
    started = time.time()
    people.approve(session_id)
    returned = time.time()
    config = people.fetch_config(session_id)
    configured = time.time()
    people.tunnel_up(config)
    up = time.time()
    answered = wait_for_answer(people.technician.namespace, target)
    if answered is None:
        raise AssertionError(f"{target} never answered after approving {session_id}")
    recorded = moment(str(people.show(session_id)["approved_at"]))
    woken, applied = agent_times(people.lab.agent_log, started)
    return Opening(started, recorded, returned, woken, applied, configured, up, answered)


@dataclass(slots=True)
class _Flow:
    sent: list[float] = field(default_factory=list)
    last_echo: float = 0.0


def _send(sock: socket.socket, target: Target, flow: _Flow, stop: Callable[[], bool]) -> None:
    """One datagram every period, reading echoes in between, until ``stop``."""
    tick = time.perf_counter()
    while not stop():
        flow.sent.append(time.time())
        sock.sendto(b"latency", (target.host, target.port))
        tick += FLOW_PERIOD_S
        while (left := tick - time.perf_counter()) > 0:
            sock.settimeout(left)
            try:
                sock.recv(256)
            except TimeoutError:
                break
            flow.last_echo = time.time()


def first_drop(sent: Sequence[float], arrived: int) -> float | None:
    """Send time of the datagram after the last one that arrived (None: nothing arrived,
    or nothing was dropped). Datagrams are not lost on the lab's links before the cut."""
    if arrived == 0 or arrived >= len(sent):
        return None
    return sent[arrived]


def close_access(people: People, session_id: str, grant: str = GRANTS[1]) -> Closing:
    """The homeowner revokes while a UDP flow to ``grant`` runs through the tunnel."""
    lab, tech = people.lab, people.technician
    target = target_of(lab, grant)
    tunnel_ip = str(people.show(session_id)["tunnel_ip"])
    flow = _Flow()
    revoked: list[float] = []
    flow_start = time.time()
    hard_stop = flow_start + FLOW_WARMUP_S + FLOW_MAX_S

    def stop() -> bool:
        now = time.time()
        if now > hard_stop:
            return True
        return bool(revoked) and now - max(flow.last_echo, revoked[0]) > FLOW_QUIET_S

    with netns.socket_in(tech.namespace, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sender = threading.Thread(target=_send, args=(sock, target, flow, stop), daemon=True)
        sender.start()
        time.sleep(FLOW_WARMUP_S)
        if flow.last_echo == 0.0:
            revoked.append(time.time())  # ends the flow
            sender.join(timeout=FLOW_MAX_S + 1)
            raise AssertionError(f"no echo from {target} before the revoke")
        started = time.time()
        people.revoke(session_id)
        returned = time.time()
        revoked.append(returned)
        sender.join(timeout=FLOW_MAX_S + 1)
    time.sleep(0.05)  # the device's log line for the last arrival is flushed by now
    device = GrantSpec.parse(grant).device
    arrivals = [
        a.t
        for a in lab.arrivals(device, since=flow_start)
        if a.proto == target.proto and a.port == target.port and a.src == tunnel_ip
    ]
    dropped = first_drop(flow.sent, len(arrivals))
    if dropped is None:
        raise AssertionError(
            f"no cut seen: {len(arrivals)} of {len(flow.sent)} datagrams arrived at {device}"
        )
    recorded = moment(str(people.show(session_id)["ended_at"]))
    woken, applied = agent_times(lab.agent_log, started)
    return Closing(
        started, recorded, returned, woken, applied, max(arrivals), dropped,
        len(flow.sent), len(arrivals),
    )  # fmt: skip


def cycle(people: People, duration_s: int = 600) -> Cycle:
    """Request, approve and connect, then revoke during a flow; the tunnel is down after."""
    session_id = people.request(GRANTS, duration_s)
    try:
        opening = open_access(people, session_id)
        closing = close_access(people, session_id)
    finally:
        people.tunnel_down()
    return Cycle(session_id, opening, closing)


def measure(
    people: People, runs: int, max_seconds: float, out: Callable[[str], None] = lambda _: None
) -> list[Cycle]:
    """``runs`` cycles, fewer if ``max_seconds`` runs out (at least one)."""
    cycles: list[Cycle] = []
    deadline = time.monotonic() + max_seconds
    while len(cycles) < runs:
        done = cycle(people)
        cycles.append(done)
        out(f"  run {len(cycles):3d}: {describe(done)}")
        if time.monotonic() > deadline:
            break
    return cycles


def describe(done: Cycle) -> str:
    o, c = done.opening, done.closing

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:4.0f}"

    return (
        f"approval recorded -> connect {ms(o.to_connect)} ms (call start-up "
        f"{ms(o.caller_start_up)}; after the record: call returned "
        f"{ms(o.call_returned - o.recorded)}, agent applied "
        f"{ms(o.agent_applied - o.recorded)}, config {ms(o.configured - o.recorded)}, "
        f"wg-quick up {ms(o.tunnel_up - o.recorded)}); revoke recorded -> drop "
        f"{ms(c.to_drop)} ms (call start-up {ms(c.caller_start_up)})"
    )


@dataclass(frozen=True, slots=True)
class CliPeople:
    """The homeowner and one technician on the ``ztb`` CLI (``lab.broker_lab``)."""

    broker: BrokerLab
    owner: Person
    tech: Person
    technician: Technician
    home: str

    @property
    def lab(self) -> Lab:
        return self.broker.lab

    def request(self, grants: Sequence[str], duration_s: int) -> str:
        flags = [arg for grant in grants for arg in ("--grant", grant)]
        out = self.broker.ztb(
            self.tech, "session", "request", "--home", self.home, *flags,
            "--duration", f"{duration_s}s", "--reason", "lab support call",
        ).stdout  # fmt: skip
        return out.strip()

    def approve(self, session_id: str) -> None:
        self.broker.ztb(self.owner, "session", "approve", session_id)

    def revoke(self, session_id: str) -> None:
        self.broker.ztb(self.owner, "session", "revoke", session_id, "--reason", "done")

    def show(self, session_id: str) -> Mapping[str, Any]:
        return self.broker.ztb_json(self.owner, "session", "show", session_id)

    def fetch_config(self, session_id: str) -> Path:
        return self.broker.download_config(self.tech, self.technician, session_id)

    @property
    def _config(self) -> Path:
        return self.tech.home / f"{self.technician.wg_interface}.conf"

    def tunnel_up(self, config: Path) -> None:
        """Stock ``wg-quick up`` only: the lab's widening (``widen``) is not the product's
        and stays out of the timed span."""
        technician.up(self.technician, config)

    def widen(self) -> None:
        """After ``tunnel_up``: route the lab's wider ranges into the tunnel as well."""
        technician.widen(self.technician, router_key(self._config))

    def tunnel_down(self) -> None:
        self.broker.disconnect(self.technician, self._config)
        self._config.unlink(missing_ok=True)
