"""One support call through the running product, timed: approve -> first connect, and
revoke -> first dropped packet.

Per cycle the technician requests a session with a key pair made locally (two grants:
thermostat tcp/443 to connect to, camera udp/5000 for the probe flow). Then:

* **time to access**, zero = the homeowner's approve API call returned: the technician
  waits for the session to be ``active`` (as ``ztb session config`` does), fetches the
  wg-quick config over the API, fills in the private key, runs stock
  ``wg-quick up`` (wireguard-go) and opens TCP connections until one is answered (the
  first includes the WireGuard handshake). The agent's long-poll wake and apply are read
  from its own log (``ts=`` to the millisecond); they run in parallel with the
  technician's steps.
* **revocation latency**, zero = the revoke API call returned: a UDP flow (one datagram
  every ``FLOW_PERIOD_S``) runs through the tunnel to the camera, whose lab service logs
  each arrival with its time. The first dropped datagram is the one after the last that
  arrived (device side), and the latency is its send time minus zero.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab import netns, technician
from lab.latency import wait_for_answer
from lab.probes import Target
from ztb.client.activation import ACTIVE_WAIT_S, wait_until_active

from .product import Product, with_private_key
from .udp_probe import first_drop

GRANTS = ["thermostat:tcp/443", "camera:udp/5000"]
SESSION_S = 600
CONNECT_TIMEOUT_S = 10.0
FLOW_PERIOD_S = 0.005
FLOW_WARMUP_S = 0.3
FLOW_QUIET_S = 0.3  # after the revoke, the flow stops once no echo came back this long
FLOW_MAX_S = 5.0
AGENT_LOG_WAIT_S = 3.0


@dataclass(frozen=True, slots=True)
class Opening:
    """Seconds after the approve call returned (``approve_call``: how long it took)."""

    approve_call: float
    agent_woken: float
    agent_applied: float
    config_fetched: float
    tunnel_up: float
    connected: float

    @property
    def total(self) -> float:
        return self.connected


@dataclass(frozen=True, slots=True)
class Closing:
    """Seconds after the revoke call returned (``revoke_call``: how long it took)."""

    revoke_call: float
    agent_woken: float
    agent_applied: float
    last_arrival: float  # device side: the last datagram that got through
    first_drop: float  # send time of the first datagram that did not
    sent: int
    arrived: int

    @property
    def total(self) -> float:
        return self.first_drop


@dataclass(slots=True)
class _Flow:
    sent: list[float] = field(default_factory=list)
    last_echo: float = 0.0


def _agent_times(product: Product, since: float, zero: float) -> tuple[float, float]:
    """When the agent got the next document and when it applied it, relative to ``zero``."""
    deadline = time.monotonic() + AGENT_LOG_WAIT_S
    while time.monotonic() < deadline:
        events = product.agent_events(since - 0.001)
        woken = next((e for e in events if e.event == "desired_state"), None)
        if woken is not None:
            applied = next(
                (
                    e
                    for e in events
                    if e.event == "applied" and "reason=document" in e.fields and e.ts >= woken.ts
                ),
                None,
            )
            if applied is not None:
                return woken.ts - zero, applied.ts - zero
        time.sleep(0.02)
    raise RuntimeError(f"the agent logged no apply after {since:.3f}")


def request(product: Product) -> tuple[str, technician.KeyPair]:
    keys = technician.KeyPair.generate()
    made = product.tech.call(
        lambda c: c.request_session(product.home_id, GRANTS, SESSION_S, "bench", keys.public)
    )
    return str(made["id"]), keys


def open_access(product: Product, session_id: str, keys: technician.KeyPair) -> Opening:
    lab = product.lab
    tech = lab.tech(1)
    target = lab.target("thermostat", "tcp", 443)
    started = time.time()
    product.owner.call(lambda c: c.approve_session(session_id))
    zero = time.time()
    # As `ztb session config` does: hold the config until the router has the peer, so the
    # first handshake is answered instead of retried after WireGuard's 5 s.
    product.tech.call(lambda c: wait_until_active(c, session_id, ACTIVE_WAIT_S, announce=False))
    config = product.tech.call(lambda c: c.wg_quick(session_id))
    path = lab.run_dir / f"{tech.wg_interface}.conf"
    technician.write_secret(path, with_private_key(config, keys.private))
    fetched = time.time()
    netns.run_in(tech.namespace, ["wg-quick", "up", str(path)], env=technician.WG_QUICK_ENV)
    up = time.time()
    answered = wait_for_answer(tech.namespace, target, CONNECT_TIMEOUT_S)
    if answered is None:
        raise RuntimeError(f"{target} never answered within {CONNECT_TIMEOUT_S:g} s of approval")
    woken, applied = _agent_times(product, started, zero)
    return Opening(zero - started, woken, applied, fetched - zero, up - zero, answered - zero)


def _send(sock: socket.socket, target: Target, flow: _Flow, stop: Callable[[], bool]) -> None:
    """One numbered datagram every period, reading echoes in between, until ``stop``."""
    sock.settimeout(FLOW_PERIOD_S)
    tick = time.perf_counter()
    while not stop():
        flow.sent.append(time.time())
        sock.sendto(b"bench", (target.host, target.port))
        tick += FLOW_PERIOD_S
        while (left := tick - time.perf_counter()) > 0:
            sock.settimeout(left)
            try:
                sock.recv(256)
            except TimeoutError:
                break
            flow.last_echo = time.time()


def close_access(product: Product, session_id: str, tunnel_ip: str) -> Closing:
    lab = product.lab
    tech = lab.tech(1)
    target = lab.target("camera", "udp", 5000)
    flow = _Flow()
    revoked: list[float] = []
    flow_start = time.time()
    hard_stop = flow_start + FLOW_WARMUP_S + FLOW_MAX_S

    def stop() -> bool:
        now = time.time()
        if now > hard_stop:
            return True
        return bool(revoked) and now - max(flow.last_echo, revoked[0]) > FLOW_QUIET_S

    sock = netns.socket_in(tech.namespace, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sender = threading.Thread(target=_send, args=(sock, target, flow, stop), daemon=True)
        sender.start()
        time.sleep(FLOW_WARMUP_S)
        if flow.last_echo == 0.0:
            revoked.append(time.time())  # ends the flow
            sender.join(timeout=FLOW_MAX_S + 1)
            raise RuntimeError(f"no echo from {target} before the revoke")
        started = time.time()
        product.owner.call(lambda c: c.revoke_session(session_id, "bench"))
        zero = time.time()
        revoked.append(zero)
        sender.join(timeout=FLOW_MAX_S + 1)
    time.sleep(0.05)  # the device's log line for the last arrival is flushed by now
    arrivals = [
        a.t
        for a in lab.arrivals("camera", since=flow_start)
        if a.proto == "udp" and a.port == target.port and a.src == tunnel_ip
    ]
    dropped = first_drop(flow.sent, set(range(len(arrivals))))
    if not arrivals or dropped is None:
        raise RuntimeError(
            f"no cut seen: {len(arrivals)} of {len(flow.sent)} datagrams arrived at the camera"
        )
    woken, applied = _agent_times(product, started, zero)
    return Closing(
        zero - started, woken, applied, max(arrivals) - zero, dropped - zero,
        len(flow.sent), len(arrivals),
    )  # fmt: skip


def tunnel_down(product: Product) -> None:
    tech = product.lab.tech(1)
    path = product.lab.run_dir / f"{tech.wg_interface}.conf"
    if path.exists():
        argv = ["wg-quick", "down", str(path)]
        netns.run_in(tech.namespace, argv, env=technician.WG_QUICK_ENV, check=False)


@dataclass(frozen=True, slots=True)
class Cycle:
    opening: Opening
    closing: Closing


def cycle(product: Product) -> Cycle:
    """Request, approve and connect, then revoke during a flow; the tunnel is down after."""
    session_id, keys = request(product)
    try:
        opening = open_access(product, session_id, keys)
        tunnel_ip = str(product.tech.call(lambda c: c.get_session(session_id))["tunnel_ip"])
        closing = close_access(product, session_id, tunnel_ip)
    finally:
        tunnel_down(product)
    return Cycle(opening, closing)
