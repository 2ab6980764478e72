"""Homes, their devices, policy, enrollment tokens and agents (HTTP adapters of
``homes_service`` and ``reads.homes``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response

from .. import homes_service as service
from ..auth import broker_of
from ..reads import homes
from ..schemas import DevicePatch, HomePatch, NewDevice, NewHome, Ttl
from .deps import Me, StepUp

router = APIRouter(prefix="/v1/homes", tags=["homes"])


@router.post("", status_code=201)
def new_home(request: Request, principal: Me, body: NewHome) -> dict[str, Any]:
    return service.new_home(broker_of(request), principal, body.model_dump())


@router.get("")
def list_homes(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return homes.list_homes(db, principal)


@router.get("/{home_ref}")
def get_home(request: Request, principal: Me, home_ref: str) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return homes.get_home(db, principal, home_ref)


@router.patch("/{home_ref}")
def patch_home(
    request: Request, principal: Me, home_ref: str, body: HomePatch, proof: StepUp
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    return service.update_home(broker_of(request), principal, home_ref, changes, proof)


@router.put("/{home_ref}/policy")
def put_policy(
    request: Request,
    principal: Me,
    home_ref: str,
    body: Annotated[dict[str, Any], Body()],
    proof: StepUp,
) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        return service.set_policy(uow, principal, home_ref, body, proof)


@router.post("/{home_ref}/enroll-token", status_code=201)
def enroll_token(
    request: Request, principal: Me, home_ref: str, body: Ttl | None = None
) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        return service.new_enroll_token(uow, principal, home_ref, (body or Ttl()).ttl_s)


@router.post("/{home_ref}/agents/{agent_id}/revoke")
def revoke_agent(request: Request, principal: Me, home_ref: str, agent_id: str) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        return service.revoke_agent(uow, principal, home_ref, agent_id)


@router.post("/{home_ref}/devices", status_code=201)
def add_device(request: Request, principal: Me, home_ref: str, body: NewDevice) -> dict[str, Any]:
    return broker_of(request).run(
        lambda uow: service.add_device(uow, principal, home_ref, body.name, body.ip, body.mac)
    )


@router.get("/{home_ref}/devices")
def list_devices(request: Request, principal: Me, home_ref: str) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return homes.list_devices(db, principal, home_ref)


@router.patch("/{home_ref}/devices/{device_ref}")
def patch_device(
    request: Request, principal: Me, home_ref: str, device_ref: str, body: DevicePatch
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    with broker_of(request).unit_of_work() as uow:
        return service.update_device(uow, principal, home_ref, device_ref, changes)


@router.delete("/{home_ref}/devices/{device_ref}", status_code=204)
def delete_device(request: Request, principal: Me, home_ref: str, device_ref: str) -> Response:
    with broker_of(request).unit_of_work() as uow:
        service.remove_device(uow, principal, home_ref, device_ref)
    return Response(status_code=204)
