"""The whole product running in a lab, driven over its HTTPS API from the benchmark process.

``ztb broker serve`` in the broker namespace, the agent enrolled with a one-time token and
running ``ztb agent run --state-dir`` on the router (``lab.broker_lab`` starts both), a
homeowner on the internet host and a technician in their own namespace. People act with
``ztb.client.http.ZtbClient`` (httpx) whose connections are opened inside their
namespace, so no Python start-up sits inside a timed span and no packet leaves the lab.
Everything is torn down by ``lab.harness.Lab`` on the way out, also after a failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from lab import netns
from lab.broker_lab import BrokerLab
from lab.harness import Lab
from lab.topology import LAN, ROUTER_LAN_IP, TUNNEL_POOL
from ztb.client.http import ZtbClient
from ztb.client.keys import PRIVATE_KEY_PLACEHOLDER

T = TypeVar("T")
HOME = "bench-home"
_AGENT_EVENT = re.compile(r"^ts=(?P<ts>[\d.]+) event=(?P<event>\w+)(?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class Person:
    """One identity's API client; every call runs with the socket in namespace ``ns``."""

    ns: str
    api: ZtbClient

    def call(self, action: Callable[[ZtbClient], T]) -> T:
        with netns.inside(self.ns):
            return action(self.api)


@dataclass(frozen=True, slots=True)
class AgentEvent:
    ts: float
    event: str
    fields: str


@dataclass(frozen=True, slots=True)
class Product:
    lab: Lab
    broker: BrokerLab
    owner: Person
    tech: Person
    home_id: str

    def agent_events(self, since: float) -> list[AgentEvent]:
        """The agent's logfmt events at or after ``since`` (wall clock, ms resolution)."""
        events = []
        for line in self.lab.agent_log.read_text().splitlines():
            match = _AGENT_EVENT.match(line)
            if match and float(match["ts"]) >= since:
                events.append(AgentEvent(float(match["ts"]), match["event"], match["rest"]))
        return events


def with_private_key(config: str, private_key: str) -> str:
    """The broker's wg-quick text with the technician's locally kept key filled in."""
    if PRIVATE_KEY_PLACEHOLDER not in config:
        raise RuntimeError("the broker's config has no private-key placeholder")
    return config.replace(PRIVATE_KEY_PLACEHOLDER, f"PrivateKey = {private_key}")


@contextmanager
def running(prefix: str) -> Iterator[Product]:
    """Build the lab (namespace prefix ``prefix``), start broker and agent, provision one
    home with the lab's devices, a homeowner and a technician."""
    with Lab(prefix, technicians=1, start_agent=False, connect_technicians=False) as lab:
        broker = BrokerLab(lab)
        admin_token = broker.bootstrap().token
        broker.start_broker()
        with ExitStack() as clients:

            def person(ns: str, token: str) -> Person:
                api = ZtbClient(lab.topo.broker_url, token, ca_cert=broker.ca_cert)
                clients.callback(api.close)
                return Person(ns, api)

            admin = person(lab.topo.host, admin_token)
            owner_token = admin.call(lambda c: c.create_user("owner@bench.test", "homeowner"))
            tech_token = admin.call(lambda c: c.create_user("tech@bench.test", "technician"))
            owner = person(lab.topo.host, str(owner_token["token"]))
            tech = person(lab.tech(1).namespace, str(tech_token["token"]))
            fields = {
                "name": HOME,
                "owner": "owner@bench.test",
                "lan": str(LAN),
                "router_ip": str(ROUTER_LAN_IP),
                "tunnel_pool": str(TUNNEL_POOL),
            }
            home_id = str(admin.call(lambda c: c.create_home(fields))["id"])
            for device in lab.topo.devices:
                name, ip = device.name, str(device.ip)
                owner.call(lambda c: c.add_device(HOME, name, ip, None))  # noqa: B023
            token = admin.call(lambda c: c.create_enroll_token(HOME, 600))["token"]
            broker.enroll_with(str(token), broker.state_dir)
            broker.start_agent()
            yield Product(lab, broker, owner, tech, home_id)
