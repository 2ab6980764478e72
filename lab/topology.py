"""The lab's shape: which namespaces exist, their addresses, and how they are wired.

::

    technicians (203.0.113.11, .12, ...) ─┐
    home router WAN (203.0.113.1) ────────┤ bridge in the "inet" namespace
                                          │ (203.0.113.254, 198.51.100.1)
    internet host (198.51.100.10) ── veth ┤
    broker (198.51.100.2:8443) ───── veth ┘ (the real ``ztb broker serve``)
    home router LAN bridge 192.168.77.1/24 + fd77::1/64
      └── thermostat .20, camera .21, nas .22 (one namespace each)
    second home (``homes=2``): router2 WAN 203.0.113.2, LAN 192.168.88.1/24 └── lock .40

The fake internet routes the home LAN and the tunnel pool back to the router's WAN
address instead of the router masquerading: a packet that escaped the tunnel would
really arrive, so "blocked" checks mean the firewall stopped it. Default routes exist
only inside lab namespaces and point at other lab namespaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from netpolicy.grants import PortRange, Proto
from netpolicy.model import HomeNetwork

from . import netns

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{1,9}$")

LAN = IPv4Network("192.168.77.0/24")
LAN6 = IPv6Network("fd77::/64")
ROUTER_LAN_IP = IPv4Address("192.168.77.1")
ROUTER_LAN_IP6 = IPv6Address("fd77::1")
TUNNEL_POOL = IPv4Network("10.77.0.0/24")
TUNNEL_POOL6 = IPv6Network("fd7e::/64")
ROUTER_TUNNEL_IP = IPv4Address("10.77.0.1")
ROUTER_WAN_IP = IPv4Address("203.0.113.1")
INET_WAN_GW = IPv4Address("203.0.113.254")
INET_HOST_GW = IPv4Address("198.51.100.1")
INTERNET_HOST_IP = IPv4Address("198.51.100.10")
BROKER_IP = IPv4Address("198.51.100.2")
# The second home: another router, LAN, tunnel pool and one device on the same port.
ROUTER2_WAN_IP = IPv4Address("203.0.113.2")
LAN2 = IPv4Network("192.168.88.0/24")
ROUTER2_LAN_IP = IPv4Address("192.168.88.1")
TUNNEL_POOL2 = IPv4Network("10.88.0.0/24")
BROKER_PORT = 8443
WG_PORT = 51820


@dataclass(frozen=True, slots=True)
class Service:
    proto: Proto
    ports: PortRange


@dataclass(frozen=True, slots=True)
class Device:
    """A LAN device: its own namespace running ``lab.services`` on ``services``."""

    name: str
    host: int
    services: tuple[Service, ...]
    lan: IPv4Network = LAN

    @property
    def ip(self) -> IPv4Address:
        return self.lan.network_address + self.host

    @property
    def ip6(self) -> IPv6Address:
        return LAN6.network_address + self.host


def _svc(proto: Proto, ports: str) -> Service:
    return Service(proto, PortRange.parse(ports))


DEVICES: tuple[Device, ...] = (
    Device("thermostat", 20, (_svc("tcp", "443"), _svc("tcp", "80"))),
    Device("camera", 21, (_svc("tcp", "554"), _svc("udp", "5000-5010"))),
    Device("nas", 22, (_svc("tcp", "8000-8010"), _svc("udp", "8000-8010"))),
)
HOME2_DEVICE = Device("lock", 40, (_svc("tcp", "443"),), LAN2)
# What the router itself listens on, reached from the LAN and (it must not be) the tunnel.
ROUTER_SERVICES: tuple[Service, ...] = (_svc("tcp", "22"), _svc("udp", "53"))
# Internet host and technicians listen too, so "no exit" and "no LAN-initiated
# connection" are tested against something that would answer.
INTERNET_SERVICES: tuple[Service, ...] = (_svc("tcp", "80"), _svc("udp", "53"))
TECHNICIAN_SERVICES: tuple[Service, ...] = (_svc("tcp", "2222"), _svc("udp", "2222"))


@dataclass(frozen=True, slots=True)
class Technician:
    """A technician's laptop on the internet with a WireGuard interface unique on the host."""

    index: int
    namespace: str
    wg_interface: str

    @property
    def name(self) -> str:
        return f"tech{self.index}"

    @property
    def wan_ip(self) -> IPv4Address:
        return IPv4Address("203.0.113.10") + self.index

    @property
    def tunnel_ip(self) -> IPv4Address:
        return TUNNEL_POOL.network_address + 10 + self.index

    @property
    def tunnel_ip6(self) -> IPv6Address:
        return TUNNEL_POOL6.network_address + 10 + self.index


@dataclass(frozen=True, slots=True)
class Topology:
    """Every name of one lab instance, all derived from its prefix."""

    prefix: str
    technician_count: int = 2
    homes: int = 1

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise ValueError(f"lab prefix must match {PREFIX_PATTERN.pattern}, not {self.prefix!r}")
        if not 1 <= self.technician_count <= 9:
            raise ValueError("a lab has 1 to 9 technicians")
        if self.homes not in (1, 2):
            raise ValueError("a lab has 1 or 2 homes")

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def inet(self) -> str:
        return self.ns("inet")

    @property
    def host(self) -> str:
        return self.ns("host")

    @property
    def router(self) -> str:
        return self.ns("router")

    @property
    def broker(self) -> str:
        return self.ns("broker")

    @property
    def broker_url(self) -> str:
        return f"https://{BROKER_IP}:{BROKER_PORT}"

    @property
    def router_wg(self) -> str:
        return f"{self.prefix}-wg"

    @property
    def router2(self) -> str:
        return self.ns("router2")

    @property
    def router2_wg(self) -> str:
        return f"{self.prefix}-wg2"

    @property
    def endpoint2(self) -> str:
        return f"{ROUTER2_WAN_IP}:{WG_PORT}"

    @property
    def second_home_namespaces(self) -> tuple[str, ...]:
        if self.homes < 2:
            return ()
        return (self.router2, self.device_ns(HOME2_DEVICE))

    @property
    def devices(self) -> tuple[Device, ...]:
        return DEVICES

    def device(self, name: str) -> Device:
        for device in DEVICES:
            if device.name == name:
                return device
        raise KeyError(f"no device {name!r} in the lab (have {', '.join(self.device_names)})")

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(device.name for device in DEVICES)

    def device_ns(self, device: Device) -> str:
        return self.ns(device.name)

    @property
    def technicians(self) -> tuple[Technician, ...]:
        return tuple(
            Technician(i, self.ns(f"tech{i}"), f"{self.prefix}-t{i}")
            for i in range(1, self.technician_count + 1)
        )

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (
            self.inet,
            self.host,
            self.broker,
            self.router,
            *(self.device_ns(d) for d in DEVICES),
            *(t.namespace for t in self.technicians),
            *self.second_home_namespaces,
        )

    @property
    def wg_interfaces(self) -> tuple[str, ...]:
        """Every name this prefix may use (also the second home's), for cleanup."""
        return (self.router_wg, self.router2_wg, *(t.wg_interface for t in self.technicians))

    @property
    def home_network(self) -> HomeNetwork:
        return HomeNetwork(
            lan=LAN,
            router_ip=ROUTER_LAN_IP,
            tunnel_pool=TUNNEL_POOL,
            lan6=LAN6,
            tunnel_pool6=TUNNEL_POOL6,
        )

    @property
    def endpoint(self) -> str:
        return f"{ROUTER_WAN_IP}:{WG_PORT}"


def build(topo: Topology, created: list[str]) -> None:
    """Create every namespace and link; each namespace name is appended to ``created``
    before anything is put in it, so a failure half-way still gets cleaned up."""
    for name in topo.namespaces:
        created.append(name)
        netns.create_namespace(name)
    _build_internet(topo)
    _build_broker(topo)
    _build_router(topo)
    for device in DEVICES:
        _build_device(topo, device)
    for tech in topo.technicians:
        _build_technician(topo, tech)
    if topo.homes == 2:
        _build_second_home(topo)


def _build_internet(topo: Topology) -> None:
    netns.add_bridge(topo.inet, "br-wan")
    netns.configure(topo.inet, "br-wan", [f"{INET_WAN_GW}/24"])
    netns.add_veth(topo.inet, "host", topo.host, "eth0")
    netns.configure(topo.inet, "host", [f"{INET_HOST_GW}/24"])
    netns.configure(
        topo.host, "eth0", [f"{INTERNET_HOST_IP}/24"], [("0.0.0.0/0", str(INET_HOST_GW))]
    )
    netns.sysctl(topo.inet, {"net.ipv4.ip_forward": "1"})


def _build_broker(topo: Topology) -> None:
    """A /32 on its own veth: the internet host keeps its /24 (the inet namespace answers
    its ARP for the broker address by proxy), the broker sits beside it."""
    netns.add_veth(topo.inet, "broker", topo.broker, "eth0")
    netns.configure(topo.inet, "broker")
    netns.run_in(topo.inet, ["ip", "route", "add", f"{BROKER_IP}/32", "dev", "broker"])
    netns.sysctl(topo.inet, {"net.ipv4.conf.host.proxy_arp": "1"})
    netns.configure(topo.broker, "eth0", [f"{BROKER_IP}/32"])
    netns.run_in(topo.broker, ["ip", "route", "add", f"{INET_HOST_GW}/32", "dev", "eth0"])
    netns.run_in(topo.broker, ["ip", "route", "add", "default", "via", str(INET_HOST_GW)])


def _build_router(topo: Topology) -> None:
    netns.add_veth(topo.inet, "router", topo.router, "wan")
    netns.enslave(topo.inet, "router", "br-wan")
    netns.configure(
        topo.inet,
        "br-wan",
        routes=[(str(LAN), str(ROUTER_WAN_IP)), (str(TUNNEL_POOL), str(ROUTER_WAN_IP))],
    )
    netns.configure(topo.router, "wan", [f"{ROUTER_WAN_IP}/24"], [("0.0.0.0/0", str(INET_WAN_GW))])
    netns.add_bridge(topo.router, "br-lan")
    netns.configure(topo.router, "br-lan", [f"{ROUTER_LAN_IP}/24", f"{ROUTER_LAN_IP6}/64"])
    netns.sysctl(
        topo.router,
        {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"},
    )


def _build_device(topo: Topology, device: Device) -> None:
    port = f"lan{device.host}"
    netns.add_veth(topo.router, port, topo.device_ns(device), "eth0")
    netns.enslave(topo.router, port, "br-lan")
    netns.configure(
        topo.device_ns(device),
        "eth0",
        [f"{device.ip}/24", f"{device.ip6}/64"],
        [("0.0.0.0/0", str(ROUTER_LAN_IP)), ("::/0", str(ROUTER_LAN_IP6))],
    )


def _build_technician(topo: Topology, tech: Technician) -> None:
    port = f"tech{tech.index}"
    netns.add_veth(topo.inet, port, tech.namespace, "eth0")
    netns.enslave(topo.inet, port, "br-wan")
    netns.configure(
        tech.namespace, "eth0", [f"{tech.wan_ip}/24"], [("0.0.0.0/0", str(INET_WAN_GW))]
    )


def _build_second_home(topo: Topology) -> None:
    """Another home on the same fake internet: router2 with one LAN device."""
    netns.add_veth(topo.inet, "router2", topo.router2, "wan")
    netns.enslave(topo.inet, "router2", "br-wan")
    netns.configure(
        topo.inet,
        "br-wan",
        routes=[(str(LAN2), str(ROUTER2_WAN_IP)), (str(TUNNEL_POOL2), str(ROUTER2_WAN_IP))],
    )
    netns.configure(
        topo.router2, "wan", [f"{ROUTER2_WAN_IP}/24"], [("0.0.0.0/0", str(INET_WAN_GW))]
    )
    netns.add_bridge(topo.router2, "br-lan")
    netns.configure(topo.router2, "br-lan", [f"{ROUTER2_LAN_IP}/24"])
    netns.sysctl(topo.router2, {"net.ipv4.ip_forward": "1"})
    device = HOME2_DEVICE
    netns.add_veth(topo.router2, f"lan{device.host}", topo.device_ns(device), "eth0")
    netns.enslave(topo.router2, f"lan{device.host}", "br-lan")
    netns.configure(
        topo.device_ns(device), "eth0", [f"{device.ip}/24"], [("0.0.0.0/0", str(ROUTER2_LAN_IP))]
    )
