"""The whole product running in a lab, driven over its HTTPS API from the benchmark process.

``ztb broker serve`` in the broker namespace, the agent enrolled with a one-time token and
running ``ztb agent run --state-dir`` on the router (``lab.broker_lab`` starts both), a
homeowner on the internet host and a technician in their own namespace. People act with
``ztb.client.http.ZtbClient`` (httpx) whose connections are opened inside their
namespace, so no Python start-up sits inside a timed span and no packet leaves the lab.
Everything is torn down by ``lab.harness.Lab`` on the way out, also after a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lab import netns, technician
from lab.broker_lab import BrokerLab
from lab.harness import Lab
from lab.topology import LAN, ROUTER_LAN_IP, TUNNEL_POOL, Technician
from ztb.client.activation import ACTIVE_WAIT_S, wait_until_active
from ztb.client.http import ZtbClient
from ztb.client.keys import PRIVATE_KEY_PLACEHOLDER

T = TypeVar("T")
HOME = "bench-home"


@dataclass(frozen=True, slots=True)
class Person:
    """One identity's API client; every call runs with the socket in namespace ``ns``."""

    ns: str
    api: ZtbClient

    def call(self, action: Callable[[ZtbClient], T]) -> T:
        with netns.inside(self.ns):
            return action(self.api)


@dataclass(slots=True)
class Product:
    """The running product, and its homeowner and technician acting over the API (the
    ``lab.latency.People`` of the benchmarks)."""

    lab: Lab
    broker: BrokerLab
    owner: Person
    tech: Person
    home_id: str
    _keys: dict[str, technician.KeyPair] = field(default_factory=dict)

    @property
    def technician(self) -> Technician:
        return self.lab.tech(1)

    @property
    def _config_path(self) -> Path:
        return self.lab.run_dir / f"{self.technician.wg_interface}.conf"

    def request(self, grants: Sequence[str], duration_s: int) -> str:
        keys = technician.KeyPair.generate()
        wanted = list(grants)
        made = self.tech.call(
            lambda c: c.request_session(self.home_id, wanted, duration_s, "bench", keys.public)
        )
        self._keys[str(made["id"])] = keys
        return str(made["id"])

    def approve(self, session_id: str) -> None:
        self.owner.call(lambda c: c.approve_session(session_id))

    def revoke(self, session_id: str) -> None:
        self.owner.call(lambda c: c.revoke_session(session_id, "bench"))

    def show(self, session_id: str) -> Mapping[str, Any]:
        shown: Mapping[str, Any] = self.tech.call(lambda c: c.get_session(session_id))
        return shown

    def fetch_config(self, session_id: str) -> Path:
        # As `ztb session config` does: hold the config until the router has the peer, so
        # the first handshake is answered instead of retried after WireGuard's 5 s.
        self.tech.call(lambda c: wait_until_active(c, session_id, ACTIVE_WAIT_S, announce=False))
        config = self.tech.call(lambda c: c.wg_quick(session_id))
        private = self._keys.pop(session_id).private
        technician.write_secret(self._config_path, with_private_key(config, private))
        return self._config_path

    def tunnel_up(self, config: Path) -> None:
        technician.up(self.technician, config)

    def tunnel_down(self) -> None:
        if self._config_path.exists():
            technician.disconnect(self.technician, self._config_path)
            self._config_path.unlink()


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
