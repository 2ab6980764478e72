"""Homes, their devices, policy, enrollment tokens and agents."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from sqlalchemy import select

from netpolicy.policy import HomePolicy

from ..access import can_see_home, home_for, require_role
from ..agent_service import create_enroll_token, revoke_agent
from ..auth import Principal, broker_of, current_user
from ..context import UnitOfWork
from ..db.models import Agent, Device, Home
from ..errors import ApiError
from ..homes_service import (
    check_device,
    create_home,
    set_webhook,
    validate_endpoint,
    validate_mac,
)
from ..ids import new_id
from ..schemas import DevicePatch, HomePatch, NewDevice, NewHome, Ttl
from ..views import agent_view, device_view, home_summary, home_view

router = APIRouter(prefix="/v1/homes", tags=["homes"])
Me = Annotated[Principal, Depends(current_user)]
OWNERS = ("admin", "homeowner")


def _view(uow: UnitOfWork, home: Home) -> dict[str, Any]:
    agents = list(uow.db.scalars(select(Agent).where(Agent.home_id == home.id)))
    return home_view(home, agents)


def _check_webhook(request: Request, url: str | None) -> None:
    """Judge a new webhook target before any transaction: resolving it may take a while."""
    if url:
        broker_of(request).webhooks.targets.check(url)


@router.post("", status_code=201)
def new_home(request: Request, principal: Me, body: NewHome) -> dict[str, Any]:
    require_role(principal, ["admin"], "home.create")
    _check_webhook(request, body.webhook_url)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        return _view(uow, create_home(uow, principal.actor, body.model_dump()))

    return broker_of(request).run(work)


@router.get("")
def list_homes(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        homes = uow.db.scalars(select(Home).order_by(Home.name))
        if principal.role == "technician":
            visible = [h for h in homes if can_see_home(principal, h, as_technician=True)]
            return {"homes": [home_summary(h) for h in visible]}
        return {"homes": [_view(uow, h) for h in homes if can_see_home(principal, h)]}


@router.get("/{home_ref}")
def get_home(request: Request, principal: Me, home_ref: str) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        return _view(uow, home_for(uow.db, principal, home_ref, "home.read"))


@router.patch("/{home_ref}")
def patch_home(request: Request, principal: Me, home_ref: str, body: HomePatch) -> dict[str, Any]:
    _check_webhook(request, body.webhook_url)
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "home.update")
        changes = body.model_dump(exclude_unset=True)
        if changes.get("endpoint") is not None:
            home.endpoint = validate_endpoint(changes["endpoint"])
        if "webhook_url" in changes:
            set_webhook(home, changes["webhook_url"] or "")
        if changes.get("require_totp_for_approval") is not None:
            home.require_totp_for_approval = changes["require_totp_for_approval"]
        uow.audit(principal.actor, "home.updated", home.id, {"fields": sorted(changes)})
        return _view(uow, home)


@router.put("/{home_ref}/policy")
def put_policy(
    request: Request, principal: Me, home_ref: str, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "home.policy")
        policy = HomePolicy.from_dict(body).to_dict()
        home.policy = policy
        uow.audit(principal.actor, "home.policy_set", home.id, {"policy": policy})
        return policy


@router.post("/{home_ref}/enroll-token", status_code=201)
def enroll_token(
    request: Request, principal: Me, home_ref: str, body: Ttl | None = None
) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "home.enroll_token")
        require_role(principal, ["admin"], "home.enroll_token", home.id)
        return create_enroll_token(uow, home, (body or Ttl()).ttl_s, principal.actor)


@router.post("/{home_ref}/agents/{agent_id}/revoke")
def revoke_agent_route(
    request: Request, principal: Me, home_ref: str, agent_id: str
) -> dict[str, Any]:
    """Cut an agent off: its certificate is refused from the next request on."""
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "agent.revoke")
        require_role(principal, ["admin"], "agent.revoke", home.id)
        return agent_view(revoke_agent(uow, home, agent_id, principal.actor))


@router.post("/{home_ref}/devices", status_code=201)
def add_device(request: Request, principal: Me, home_ref: str, body: NewDevice) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        home = home_for(uow.db, principal, home_ref, "device.create")
        ip = check_device(uow, home, body.name, body.ip, None)
        device = Device(
            id=new_id("dev"),
            home_id=home.id,
            name=body.name,
            ip=ip,
            mac=validate_mac(body.mac),
        )
        uow.db.add(device)
        uow.db.flush()
        uow.audit(
            principal.actor,
            "device.created",
            device.id,
            {"home_id": home.id, **device_view(device)},
        )
        return device_view(device)

    return broker_of(request).run(work)


@router.get("/{home_ref}/devices")
def list_devices(request: Request, principal: Me, home_ref: str) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "device.list", as_technician=True)
        devices = uow.db.scalars(
            select(Device).where(Device.home_id == home.id).order_by(Device.name)
        )
        return {"devices": [device_view(d) for d in devices]}


def _device(uow: UnitOfWork, home: Home, ref: str) -> Device:
    device = uow.db.scalars(
        select(Device).where(Device.home_id == home.id, (Device.id == ref) | (Device.name == ref))
    ).first()
    if device is None:
        raise ApiError(404, "device not found")
    return device


@router.patch("/{home_ref}/devices/{device_ref}")
def patch_device(
    request: Request, principal: Me, home_ref: str, device_ref: str, body: DevicePatch
) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "device.update")
        device = _device(uow, home, device_ref)
        name = body.name or device.name
        device.ip = check_device(uow, home, name, body.ip or device.ip, device.id)
        device.name = name
        if "mac" in body.model_fields_set:
            device.mac = validate_mac(body.mac)
        uow.audit(principal.actor, "device.updated", device.id, device_view(device))
        return device_view(device)


@router.delete("/{home_ref}/devices/{device_ref}", status_code=204)
def delete_device(request: Request, principal: Me, home_ref: str, device_ref: str) -> Response:
    with broker_of(request).unit_of_work() as uow:
        home = home_for(uow.db, principal, home_ref, "device.delete")
        device = _device(uow, home, device_ref)
        uow.db.delete(device)
        uow.audit(principal.actor, "device.deleted", device.id, {"home_id": home.id})
    return Response(status_code=204)
