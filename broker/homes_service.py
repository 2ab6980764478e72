"""Homes and their devices: addresses checked by netpolicy before anything is stored."""

from __future__ import annotations

import re
import secrets
from ipaddress import IPv4Network, ip_network
from typing import Any

from sqlalchemy import or_, select

from netpolicy import HomeNetwork, PolicyError, validate_device_ip, validate_lan
from netpolicy.validation import parse_address, parse_network

from .context import UnitOfWork
from .db.models import Device, Home, User
from .errors import ApiError
from .ids import new_id

# Default tunnel pools: one /24 per home out of 100.96.0.0/12 (inside 100.64.0.0/10, the
# shared address space, so they never clash with a home LAN or the internet).
POOL_SUPERNET = IPv4Network("100.96.0.0/12")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise PolicyError(f"{what} name must be 1-63 letters, digits, '.', '_' or '-'")
    return name


def validate_endpoint(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise PolicyError(f"endpoint must be HOST:PORT with a port 1-65535, not {endpoint!r}")
    if any(c.isspace() for c in endpoint):
        raise PolicyError("endpoint may not contain spaces")
    return endpoint


def validate_mac(mac: str | None) -> str | None:
    if mac is None:
        return None
    if not _MAC.match(mac.lower()):
        raise PolicyError(f"MAC address must look like aa:bb:cc:dd:ee:ff, not {mac!r}")
    return mac.lower()


def _free_pool(uow: UnitOfWork) -> str:
    used = set(uow.db.scalars(select(Home.tunnel_pool)))
    for pool in POOL_SUPERNET.subnets(new_prefix=24):
        if str(pool) not in used:
            return str(pool)
    raise ApiError(409, f"no free /24 left in {POOL_SUPERNET}")


def _network(lan: str, router_ip: str | None, pool: str) -> HomeNetwork:
    lan_net = parse_network(lan)
    if not isinstance(lan_net, IPv4Network):
        raise PolicyError("lan must be an IPv4 network")
    validate_lan(lan_net)
    router = router_ip or str(next(lan_net.hosts()))
    router_addr = parse_address(router)
    if router_addr in (lan_net.network_address, lan_net.broadcast_address):
        raise PolicyError(f"router address {router} is the LAN's network or broadcast address")
    pool_net = parse_network(pool)
    if pool_net.is_global or not 16 <= pool_net.prefixlen <= 29:
        raise PolicyError("tunnel pool must be a private or shared range from /16 to /29")
    return HomeNetwork.from_dict({"lan": lan, "router_ip": router, "tunnel_pool": pool})


def create_home(uow: UnitOfWork, actor: str, body: dict[str, Any]) -> Home:
    name = validate_name(body["name"], "home")
    owner = uow.db.scalars(
        select(User).where(or_(User.id == body["owner"], User.email == body["owner"].lower()))
    ).first()
    if owner is None or owner.role != "homeowner":
        raise PolicyError(f"owner {body['owner']!r} is not a homeowner")
    if uow.db.scalars(select(Home.id).where(Home.name == name)).first():
        raise ApiError(409, f"a home named {name!r} already exists")
    network = _network(
        body["lan"], body.get("router_ip"), body.get("tunnel_pool") or _free_pool(uow)
    )
    if uow.db.scalars(select(Home.id).where(Home.tunnel_pool == str(network.tunnel_pool))).first():
        raise ApiError(409, f"tunnel pool {network.tunnel_pool} is used by another home")
    home = Home(
        id=new_id("home"),
        name=name,
        owner_id=owner.id,
        lan=str(network.lan),
        router_ip=str(network.router_ip),
        tunnel_pool=str(network.tunnel_pool),
        endpoint=validate_endpoint(body["endpoint"]) if body.get("endpoint") else None,
        policy={},
        revision=1,
        require_totp_for_approval=False,
        created_at=uow.now,
    )
    set_webhook(home, body.get("webhook_url"))
    uow.db.add(home)
    uow.db.flush()
    uow.audit(actor, "home.created", home.id, {"name": name, "owner_id": owner.id, "lan": home.lan})
    return home


def set_webhook(home: Home, url: str | None) -> None:
    if url is None:
        return
    if url and not re.match(r"^https?://[^\s]+$", url):
        raise PolicyError("webhook_url must be an http(s) URL")
    home.webhook_url = url or None
    home.webhook_secret = secrets.token_urlsafe(32) if url else None


def check_device(uow: UnitOfWork, home: Home, name: str, ip: str, device_id: str | None) -> str:
    """Raise unless the device fits the home; returns the address in canonical form."""
    validate_name(name, "device")
    lan = ip_network(home.lan)
    ip = str(validate_device_ip(parse_address(ip), lan, parse_address(home.router_ip)))
    clash = uow.db.scalars(
        select(Device).where(
            Device.home_id == home.id,
            or_(Device.name == name, Device.ip == ip),
            Device.id != (device_id or ""),
        )
    ).first()
    if clash is not None:
        raise ApiError(409, f"device {clash.name} ({clash.ip}) already has that name or address")
    return ip
