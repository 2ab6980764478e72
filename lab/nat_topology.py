"""Homes behind NAT and CGNAT, a relay, and a technician behind its own NAT.

Added to an ordinary ``Lab`` (whose router is the home with a public address)::

    technician ntech 10.9.0.2 ── ntnat (masquerade) 203.0.113.30 ─┐
    relay 203.0.113.50 (``ztb relay serve``) ─────────────────────┤
    home 1: the Lab's router 203.0.113.1 (public) ────────────────┤ br-wan of "inet"
    home 2: h2nat 203.0.113.2 (masquerade) ───────────────────────┤
              └ h2router 10.2.0.2, LAN 192.168.78.0/24 └ h2dev .20
    home 3: cgnat 203.0.113.3 (masquerade, 100.64.0.0/24 inside) ─┘
              └ h3nat 100.64.0.2 (masquerade) └ h3router 10.3.0.2, LAN 192.168.79.0/24
                                                  └ h3dev .20

No NAT box forwards a port: homes 2 and 3 are reachable only because their routers dial
out to the relay. Every namespace, process and WireGuard interface goes into the Lab's
run state first, so the Lab's cleanup removes them too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from wireguard_tools import WireguardKey

from netpolicy.grants import Grant, GrantSpec, PortRange
from netpolicy.model import DesiredState, HomeNetwork, LiveSession
from netpolicy.relay import RelayPath, RelayState
from netpolicy.wgquick import TechnicianConfig, render_wg_quick
from ztb.files import write_atomic

from . import netns, services, technician
from .harness import READY_TIMEOUT_S, SERVICE_LIFETIME_S, Lab, ztb_argv
from .topology import INET_WAN_GW, LAN, TUNNEL_POOL, WG_PORT, Service

RELAY_IP = IPv4Address("203.0.113.50")
RELAY_FIRST_PORT = 40000
RELAY_METRICS_PORT = 9479
TECH_NAT_WAN = IPv4Address("203.0.113.30")
TECH_INSIDE = IPv4Network("10.9.0.0/24")
DEVICE_HOST = 20
TECH_HOST = 50  # the technician's tunnel address in every home's pool
DEVICE_SERVICES = (Service("tcp", PortRange.parse("443")), Service("tcp", PortRange.parse("80")))
ROUTER_SERVICES = (Service("tcp", PortRange.parse("22")),)


@dataclass(frozen=True, slots=True)
class NatHome:
    """One home of the NAT lab and how the internet sees it."""

    index: int
    reachability: str  # "direct" (public address) or "relay"
    public_ip: IPv4Address
    lan: IPv4Network
    tunnel_pool: IPv4Network
    nat_chain: tuple[tuple[str, IPv4Address, IPv4Network], ...]  # (role, wan ip, inside)

    @property
    def router_ip(self) -> IPv4Address:
        return self.lan.network_address + 1

    @property
    def device_ip(self) -> IPv4Address:
        return self.lan.network_address + DEVICE_HOST

    @property
    def tech_tunnel_ip(self) -> IPv4Address:
        return self.tunnel_pool.network_address + TECH_HOST

    @property
    def network(self) -> HomeNetwork:
        return HomeNetwork(lan=self.lan, router_ip=self.router_ip, tunnel_pool=self.tunnel_pool)

    @property
    def relay_ports(self) -> tuple[int, int]:
        """(technician side, home side) of this home's relay path."""
        first = RELAY_FIRST_PORT + 2 * (self.index - 2)
        return first, first + 1


HOMES: tuple[NatHome, ...] = (
    NatHome(1, "direct", IPv4Address("203.0.113.1"), LAN, TUNNEL_POOL, ()),
    NatHome(
        2,
        "relay",
        IPv4Address("203.0.113.2"),
        IPv4Network("192.168.78.0/24"),
        IPv4Network("10.78.0.0/24"),
        (("h2nat", IPv4Address("203.0.113.2"), IPv4Network("10.2.0.0/24")),),
    ),
    NatHome(
        3,
        "relay",
        IPv4Address("203.0.113.3"),
        IPv4Network("192.168.79.0/24"),
        IPv4Network("10.79.0.0/24"),
        (
            ("cgnat", IPv4Address("203.0.113.3"), IPv4Network("100.64.0.0/24")),
            ("h3nat", IPv4Address("100.64.0.2"), IPv4Network("10.3.0.0/24")),
        ),
    ),
)


class NatLab:
    """The NAT homes, relay and NAT'd technician on top of ``lab``."""

    def __init__(self, lab: Lab, relay_kernel: bool = True) -> None:
        self.lab = lab
        self.relay_kernel = relay_kernel
        self.prefix = lab.topo.prefix
        self.tech_keys = technician.KeyPair.generate()
        self.router_keys = {1: lab.router_keys}
        self.router_keys.update({h.index: technician.KeyPair.generate() for h in HOMES[1:]})
        self.revisions = dict.fromkeys(range(1, 4), 0)
        self.relay_revision = 0
        self._agent_pids: dict[int, int] = {}

    # ------------------------------------------------------------------ names
    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def relay_ns(self) -> str:
        return self.ns("relay")

    @property
    def tech_ns(self) -> str:
        return self.ns("ntech")

    def router_ns(self, home: NatHome) -> str:
        return self.lab.topo.router if home.index == 1 else self.ns(f"h{home.index}router")

    def device_ns(self, home: NatHome) -> str:
        return (
            self.lab.topo.device_ns(self.lab.topo.device("thermostat"))
            if home.index == 1
            else (self.ns(f"h{home.index}dev"))
        )

    def device_name(self, home: NatHome) -> str:
        """The name its service answers with (its banner)."""
        return "thermostat" if home.index == 1 else f"h{home.index}dev"

    def router_wg(self, home: NatHome) -> str:
        return self.lab.topo.router_wg if home.index == 1 else f"{self.prefix}-h{home.index}"

    def tech_wg(self, home: NatHome) -> str:
        return f"{self.prefix}-n{home.index}"

    def relay_endpoint(self, port: int) -> str:
        return f"{RELAY_IP}:{port}"

    @property
    def paths_file(self) -> Path:
        return self.lab.run_dir / "relay-paths.json"

    def desired_file(self, home: NatHome) -> Path:
        return (
            self.lab.desired_file if home.index == 1 else self.lab.run_dir / f"h{home.index}.json"
        )

    def status_file(self, home: NatHome) -> Path:
        return (
            self.lab.status_file if home.index == 1 else self.lab.run_dir / f"h{home.index}.status"
        )

    # ------------------------------------------------------------------ build
    def build(self, homes: bool = True) -> None:
        """Everything; with ``homes=False`` only the relay's namespace (no relay process)."""
        state = self.lab.state
        roles = ["relay", "ntnat", "ntech"] if homes else ["relay"]
        for home in HOMES[1:] if homes else ():
            roles += [role for role, _, _ in home.nat_chain]
            roles += [f"h{home.index}router", f"h{home.index}dev"]
        for role in roles:
            state.namespaces.append(self.ns(role))
            state.save()
            netns.create_namespace(self.ns(role))
        state.wg_interfaces += [self.router_wg(h) for h in HOMES[1:]]
        state.wg_interfaces += [self.tech_wg(h) for h in HOMES]
        state.save()
        inet = self.lab.topo.inet
        self._on_wan(inet, self.relay_ns, RELAY_IP)
        netns.sysctl(self.relay_ns, {"net.ipv4.ip_forward": "1"})
        if not homes:
            return
        self._nat_box(inet, self.ns("ntnat"), TECH_NAT_WAN, TECH_INSIDE, self.tech_ns)
        for home in HOMES[1:]:
            self._build_home(inet, home)
        self._start_services()
        for home in HOMES[1:]:
            self._start_agent(home)
        self._start_relay()

    def _on_wan(self, inet: str, ns: str, address: IPv4Address) -> None:
        port = ns.rsplit("-", 1)[1][:8]
        netns.add_veth(inet, port, ns, "wan")
        netns.enslave(inet, port, "br-wan")
        netns.configure(ns, "wan", [f"{address}/24"], [("0.0.0.0/0", str(INET_WAN_GW))])

    def _nat_box(
        self, upstream: str, ns: str, wan: IPv4Address, inside: IPv4Network, inner: str
    ) -> None:
        """``ns`` masquerades ``inside`` behind ``wan``; ``inner`` gets ``inside``'s .2.

        A box behind another box already has its WAN link (the outer box's inside)."""
        if upstream == self.lab.topo.inet:
            self._on_wan(upstream, ns, wan)
        gateway = inside.network_address + 1
        netns.add_veth(ns, "inside", inner, "wan")
        netns.configure(ns, "inside", [f"{gateway}/{inside.prefixlen}"])
        netns.configure(
            inner, "wan", [f"{inside.network_address + 2}/{inside.prefixlen}"],
            [("0.0.0.0/0", str(gateway))],
        )  # fmt: skip
        netns.sysctl(ns, {"net.ipv4.ip_forward": "1"})
        rules = (
            "table ip labnat {\n"
            "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {inside} oifname "wan" masquerade\n'
            "  }\n"
            "}\n"
        )
        _nft_load(ns, rules)

    def _build_home(self, inet: str, home: NatHome) -> None:
        upstream = inet
        for role, wan, inside in home.nat_chain:
            inner_role = self._inner_of(home, role)
            self._nat_box(upstream, self.ns(role), wan, inside, self.ns(inner_role))
            upstream = self.ns(role)
        router = self.router_ns(home)
        netns.add_bridge(router, "br-lan")
        netns.configure(router, "br-lan", [f"{home.router_ip}/{home.lan.prefixlen}"])
        netns.sysctl(router, {"net.ipv4.ip_forward": "1"})
        device = self.device_ns(home)
        netns.add_veth(router, "lan20", device, "eth0")
        netns.enslave(router, "lan20", "br-lan")
        netns.configure(
            device, "eth0", [f"{home.device_ip}/{home.lan.prefixlen}"],
            [("0.0.0.0/0", str(home.router_ip))],
        )  # fmt: skip

    def _inner_of(self, home: NatHome, role: str) -> str:
        roles = [r for r, _, _ in home.nat_chain] + [f"h{home.index}router"]
        return roles[roles.index(role) + 1]

    def _start_services(self) -> None:
        hosts: list[tuple[str, str, tuple[Service, ...]]] = []
        for home in HOMES[1:]:
            hosts.append((self.device_name(home), self.device_ns(home), DEVICE_SERVICES))
            hosts.append((f"h{home.index}router", self.router_ns(home), ROUTER_SERVICES))
        for name, ns, svcs in hosts:
            argv = [sys.executable, "-m", "lab.services", "--name", name]
            argv += ["--log", str(self.lab.service_log(name))]
            argv += ["--max-seconds", str(SERVICE_LIFETIME_S)]
            for svc in svcs:
                argv += [f"--{svc.proto}", str(svc.ports)]
            self.lab.spawn(ns, argv, f"services {name}", self.lab.run_dir / f"{name}.out")
        deadline = time.monotonic() + READY_TIMEOUT_S
        for name, _, _ in hosts:
            while not services.is_ready(self.lab.service_log(name)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab service {name} did not start")
                time.sleep(0.02)

    def _start_agent(self, home: NatHome) -> None:
        key_file = self.lab.run_dir / f"h{home.index}.key"
        technician.write_secret(key_file, self.router_keys[home.index].private + "\n")
        self.write_desired(home, [])
        argv = ztb_argv(
            "agent", "run",
            "--desired-state", str(self.desired_file(home)),
            "--interface", self.router_wg(home),
            "--listen-port", str(WG_PORT),
            "--private-key-file", str(key_file),
            "--status-file", str(self.status_file(home)),
            "--poll-interval", "0.2",
        )  # fmt: skip
        log = self.lab.run_dir / f"h{home.index}-agent.log"
        popen = self.lab.spawn(self.router_ns(home), argv, f"agent h{home.index}", log)
        self._agent_pids[home.index] = popen.pid
        self.wait_applied(home)

    def _start_relay(self) -> None:
        self.write_paths([], wait=False)
        argv = ztb_argv(
            "relay", "serve",
            "--listen", f"{RELAY_IP}:{RELAY_FIRST_PORT}",
            "--ports", "100",
            "--paths-file", str(self.paths_file),
            "--metrics", f"{RELAY_IP}:{RELAY_METRICS_PORT}",
            *(() if self.relay_kernel else ("--no-kernel",)),
        )  # fmt: skip
        log = self.lab.run_dir / "relay.log"
        self.lab.spawn(self.relay_ns, argv, "relay", log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "relay applied" not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay did not start: {log.read_text()[-300:]}")
            time.sleep(0.05)

    # ------------------------------------------------------------------ documents
    def grant(self, home: NatHome, spec: str) -> Grant:
        """``dev:tcp/443`` on ``home``'s device."""
        parsed = GrantSpec.parse(spec)
        return Grant(home.device_ip, parsed.proto, parsed.ports, self.device_name(home))

    def session(
        self, home: NatHome, grants: tuple[str, ...], expires_in: float, psk: str
    ) -> LiveSession:
        return LiveSession(
            session_id=f"h{home.index}-{int(time.time() * 1000) % 10**8}",
            public_key=self.tech_keys.public,
            tunnel_ip=home.tech_tunnel_ip,
            grants=tuple(self.grant(home, g) for g in grants),
            expires_in=expires_in,
            preshared_key=psk,
            relay_endpoint=(
                self.relay_endpoint(home.relay_ports[1]) if home.reachability == "relay" else None
            ),
        )

    @staticmethod
    def new_psk() -> str:
        return str(WireguardKey.generate())

    def write_desired(self, home: NatHome, sessions: list[LiveSession]) -> None:
        self.revisions[home.index] += 1
        if home.index == 1:
            self.lab.write_desired(sessions)
            return
        desired = DesiredState(
            home_id=f"nat-h{home.index}",
            revision=self.revisions[home.index],
            network=home.network,
            sessions=tuple(sessions),
        )
        write_atomic(self.desired_file(home), desired.to_json(), 0o600, durable=False)

    def wait_applied(self, home: NatHome, timeout: float = 15.0) -> None:
        want = self.lab.revision if home.index == 1 else self.revisions[home.index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status: dict[str, Any] = json.loads(self.status_file(home).read_text())
            except (OSError, json.JSONDecodeError):
                status = {}
            if int(status.get("revision", -1)) >= want:
                return
            time.sleep(0.02)
        raise RuntimeError(f"home {home.index}'s agent missed revision {want}")

    def path(self, home: NatHome, expires_in: float) -> RelayPath:
        tech_port, home_port = home.relay_ports
        return RelayPath(
            path_id=f"h{home.index}",
            technician_port=tech_port,
            home_port=home_port,
            technician_key=self.tech_keys.public,
            router_key=self.router_keys[home.index].public,
            expires_in=expires_in,
        )

    def write_paths(self, paths: list[RelayPath], wait: bool = True) -> None:
        """The relay's next document; by default wait until the relay applied it, so a
        router that starts dialling finds its path open (as the broker orders it)."""
        self.relay_revision += 1
        state = RelayState("lab-relay", self.relay_revision, tuple(paths))
        write_atomic(self.paths_file, state.to_json(), 0o600, durable=False)
        log = self.lab.run_dir / "relay.log"
        needle = f'"revision": {self.relay_revision},'
        deadline = time.monotonic() + READY_TIMEOUT_S
        while wait and needle not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not apply revision {self.relay_revision}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ technician
    def technician_endpoint(self, home: NatHome) -> str:
        if home.reachability == "direct":
            return f"{home.public_ip}:{WG_PORT}"
        return self.relay_endpoint(home.relay_ports[0])

    def connect_technician(self, home: NatHome, session: LiveSession) -> Path:
        """Stock ``wg-quick up`` with the file the broker would render, then widen routes
        to the whole home LAN so blocked probes really enter the tunnel."""
        text = render_wg_quick(
            TechnicianConfig(
                private_key=self.tech_keys.private,
                tunnel_ip=home.tech_tunnel_ip,
                router_public_key=self.router_keys[home.index].public,
                endpoint=self.technician_endpoint(home),
                grants=session.grants,
                preshared_key=session.preshared_key,
            )
        )
        self.disconnect_technician(home)
        config = self.lab.run_dir / f"{self.tech_wg(home)}.conf"
        technician.write_secret(config, text)
        ifname = self.tech_wg(home)
        netns.run_in(self.tech_ns, ["wg-quick", "up", str(config)], env=technician.WG_QUICK_ENV)
        peer = self.router_keys[home.index].public
        netns.run_in(
            self.tech_ns, ["wg", "set", ifname, "peer", peer, "allowed-ips", str(home.lan)]
        )
        netns.run_in(self.tech_ns, ["ip", "route", "replace", str(home.lan), "dev", ifname])
        return config

    def disconnect_technician(self, home: NatHome) -> None:
        config = self.lab.run_dir / f"{self.tech_wg(home)}.conf"
        argv = ["wg-quick", "down", str(config)]
        netns.run_in(self.tech_ns, argv, env=technician.WG_QUICK_ENV, check=False)

    def open_sessions(self, grants: tuple[str, ...], expires_in: float) -> dict[int, LiveSession]:
        """One session per home for the NAT'd technician; relay paths for homes 2 and 3."""
        sessions: dict[int, LiveSession] = {}
        self.write_paths([self.path(h, expires_in) for h in HOMES if h.reachability == "relay"])
        for home in HOMES:
            sessions[home.index] = self.session(home, grants, expires_in, self.new_psk())
            self.write_desired(home, [sessions[home.index]])
        for home in HOMES:
            self.wait_applied(home)
        for home in HOMES:
            self.connect_technician(home, sessions[home.index])
        return sessions

    def relay_metrics(self, port: int = RELAY_METRICS_PORT) -> str:
        """The relay's ``/metrics`` text, fetched from inside its namespace."""
        out = netns.run_in(
            self.relay_ns,
            [sys.executable, "-c",
             "import urllib.request,sys;"
             f"sys.stdout.write(urllib.request.urlopen('http://{RELAY_IP}:{port}"
             "/metrics',timeout=5).read().decode())"],
        )  # fmt: skip
        return out.stdout


def _nft_load(ns: str, ruleset: str) -> None:
    subprocess.run(
        netns.exec_argv(ns, ["nft", "-f", "-"]),
        input=ruleset,
        text=True,
        check=True,
        capture_output=True,
        timeout=10,
    )
