"""Homes and their devices: who may change them, addresses checked by netpolicy before
anything is stored, and the audit event with every change."""

from __future__ import annotations

import re
import secrets
from ipaddress import IPv4Network, ip_network
from typing import Any

from sqlalchemy import or_, select

from netpolicy import HomeNetwork, PolicyError, validate_device_ip, validate_lan
from netpolicy.policy import HomePolicy
from netpolicy.validation import parse_address, parse_network

from . import agent_service, stepup
from .access import home_for, require_role
from .auth import Principal
from .context import Broker, UnitOfWork
from .db.models import Device, Home, User
from .errors import ApiError
from .ids import new_id
from .reads.homes import home_with_agents
from .views import agent_view, device_view

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


def _check_webhook(broker: Broker, url: str | None) -> None:
    """Judge a new webhook target before any transaction: resolving it may take a while."""
    if url:
        broker.webhooks.targets.check(url)


def new_home(broker: Broker, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    require_role(principal, ["admin"], "home.create")
    _check_webhook(broker, body.get("webhook_url"))

    def work(uow: UnitOfWork) -> dict[str, Any]:
        return home_with_agents(uow.db, create_home(uow, principal.actor, body))

    return broker.run(work)


def _weakened(home: Home, changes: dict[str, Any]) -> list[str]:
    """Which of these changes lower the home's protection (they need step-up)."""
    reasons = []
    if changes.get("require_totp_for_approval") is False and home.require_totp_for_approval:
        reasons.append("TOTP for approvals off")
    # A first webhook only adds a notice; moving or removing one can silence the owner.
    if "webhook_url" in changes and home.webhook_url and changes["webhook_url"] != home.webhook_url:
        reasons.append("webhook moved or removed")
    return reasons


def _stepped_up(
    uow: UnitOfWork, principal: Principal, proof: stepup.Proof, home: Home, what: list[str]
) -> None:
    """Step-up for a weakening change, its audit event, and the owner told (at the webhook
    as it was before the change)."""
    factor = stepup.require(uow, principal, proof, "home.weaken", home.id)
    details = {"changes": what, "step_up": factor}
    uow.audit(principal.actor, "home.protection_lowered", home.id, details)
    stepup.tell_owner(uow, [home], "home.protection_lowered", principal.actor, details)


def update_home(
    broker: Broker,
    principal: Principal,
    home_ref: str,
    changes: dict[str, Any],
    proof: stepup.Proof = stepup.NO_PROOF,
) -> dict[str, Any]:
    """Endpoint, webhook and the TOTP rule for approvals; only the fields given change.
    Lowering protection needs step-up (``broker.stepup``)."""
    _check_webhook(broker, changes.get("webhook_url"))
    with broker.unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "home.update")
        if weakened := _weakened(home, changes):
            _stepped_up(uow, principal, proof, home, weakened)
        if changes.get("endpoint") is not None:
            home.endpoint = validate_endpoint(changes["endpoint"])
        if "webhook_url" in changes:
            set_webhook(home, changes["webhook_url"] or "")
        if changes.get("require_totp_for_approval") is not None:
            home.require_totp_for_approval = changes["require_totp_for_approval"]
        uow.audit(principal.actor, "home.updated", home.id, {"fields": sorted(changes)})
        return home_with_agents(uow.db, home)


def set_policy(
    uow: UnitOfWork,
    principal: Principal,
    home_ref: str,
    policy: dict[str, Any],
    proof: stepup.Proof = stepup.NO_PROOF,
) -> dict[str, Any]:
    """Replace the home's policy whole, as netpolicy reads it back. A policy that admits
    more than before (auto-approve rules, longer sessions, more people) needs step-up."""
    home = home_for(uow.db, principal, home_ref, "home.policy")
    stored = HomePolicy.from_dict(policy).to_dict()
    before = HomePolicy.from_dict(home.policy or {}).to_dict()
    if weakened := stepup.policy_weakened(before, stored):
        _stepped_up(uow, principal, proof, home, weakened)
    home.policy = stored
    uow.audit(principal.actor, "home.policy_set", home.id, {"policy": stored})
    return stored


def new_enroll_token(
    uow: UnitOfWork, principal: Principal, home_ref: str, ttl_s: int
) -> dict[str, Any]:
    home = home_for(uow.db, principal, home_ref, "home.enroll_token")
    require_role(principal, ["admin"], "home.enroll_token", home.id)
    return agent_service.create_enroll_token(uow, home, ttl_s, principal.actor)


def revoke_agent(
    uow: UnitOfWork, principal: Principal, home_ref: str, agent_id: str
) -> dict[str, Any]:
    """Cut an agent off: its certificate is refused from the next request on."""
    home = home_for(uow.db, principal, home_ref, "agent.revoke")
    require_role(principal, ["admin"], "agent.revoke", home.id)
    return agent_view(agent_service.revoke_agent(uow, home, agent_id, principal.actor))


def add_device(
    uow: UnitOfWork, principal: Principal, home_ref: str, name: str, ip: str, mac: str | None
) -> dict[str, Any]:
    home = home_for(uow.db, principal, home_ref, "device.create")
    device = Device(
        id=new_id("dev"),
        home_id=home.id,
        name=name,
        ip=check_device(uow, home, name, ip, None),
        mac=validate_mac(mac),
    )
    uow.db.add(device)
    uow.db.flush()
    uow.audit(
        principal.actor, "device.created", device.id, {"home_id": home.id, **device_view(device)}
    )
    return device_view(device)


def _device(uow: UnitOfWork, home: Home, ref: str) -> Device:
    device = uow.db.scalars(
        select(Device).where(Device.home_id == home.id, (Device.id == ref) | (Device.name == ref))
    ).first()
    if device is None:
        raise ApiError(404, "device not found")
    return device


def update_device(
    uow: UnitOfWork, principal: Principal, home_ref: str, device_ref: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Rename, readdress, or set or clear the MAC; only the fields given change."""
    home = home_for(uow.db, principal, home_ref, "device.update")
    device = _device(uow, home, device_ref)
    name = changes.get("name") or device.name
    device.ip = check_device(uow, home, name, changes.get("ip") or device.ip, device.id)
    device.name = name
    if "mac" in changes:
        device.mac = validate_mac(changes["mac"])
    uow.audit(principal.actor, "device.updated", device.id, device_view(device))
    return device_view(device)


def remove_device(uow: UnitOfWork, principal: Principal, home_ref: str, device_ref: str) -> None:
    home = home_for(uow.db, principal, home_ref, "device.delete")
    device = _device(uow, home, device_ref)
    uow.db.delete(device)
    uow.audit(principal.actor, "device.deleted", device.id, {"home_id": home.id})
