"""The homeowner's pages: requests waiting, sessions active now, history, the home itself."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker import homes_service, stepup
from broker.auth import broker_of
from broker.reads import homes
from broker.schemas import DevicePatch, NewDevice
from netpolicy import PolicyError

from .deps import Homeowner
from .queries import audit_status, session_cards, shorter_durations
from .render import page

router = APIRouter()


@router.get("/requests")
def requests_waiting(request: Request, viewer: Homeowner) -> Response:
    cards = session_cards(request, viewer, "requested")
    for card in cards:
        card["choices"] = shorter_durations(card["s"]["duration_s"])
    return page(request, "requests.html", {"title": "Requests waiting for you", "cards": cards})


@router.get("/active")
def active_now(request: Request, viewer: Homeowner) -> Response:
    cards = session_cards(request, viewer, "approved", "active", with_usage=True)
    return page(request, "active.html", {"title": "Active now", "cards": cards})


@router.get("/history")
def history(request: Request, viewer: Homeowner) -> Response:
    cards = session_cards(request, viewer, "ended")
    context = {
        "title": "History and reports",
        "cards": cards,
        "audit": audit_status(request, cards),
    }
    return page(request, "history.html", context)


@router.get("/homes")
def my_homes(request: Request, viewer: Homeowner) -> Response:
    with broker_of(request).read() as db:
        listed = homes.list_homes(db, viewer)["homes"]
    if len(listed) == 1:
        return RedirectResponse(f"/web/homes/{listed[0]['id']}", status_code=303)
    return page(request, "homes.html", {"title": "Homes", "homes": listed})


@router.get("/homes/{home_ref}")
def home_page(request: Request, viewer: Homeowner, home_ref: str) -> Response:
    with broker_of(request).read() as db:
        home = homes.get_home(db, viewer, home_ref)
        devices = homes.list_devices(db, viewer, home["id"])["devices"]
    policy = home["policy"] or {}
    context = {
        "title": f"Home {home['name']}",
        "home": home,
        "devices": devices,
        "max_minutes": int(policy.get("max_duration_s", 3600)) // 60,
        "technicians": "\n".join(policy.get("technicians", [])),
        "auto_rules": json.dumps(policy.get("auto_approve", []), indent=2),
    }
    return page(request, "home.html", context)


def _back(home_id: str) -> RedirectResponse:
    return RedirectResponse(f"/web/homes/{home_id}", status_code=303)


@router.post("/homes/{home_ref}/devices")
def add_device(
    request: Request,
    viewer: Homeowner,
    home_ref: str,
    name: Annotated[str, Form(max_length=64)],
    ip: Annotated[str, Form(max_length=64)],
    mac: Annotated[str, Form(max_length=17)] = "",
) -> Response:
    body = NewDevice(name=name, ip=ip, mac=mac or None)
    broker_of(request).run(
        lambda uow: homes_service.add_device(uow, viewer, home_ref, body.name, body.ip, body.mac)
    )
    return _back(home_ref)


@router.post("/homes/{home_ref}/devices/{device_ref}/rename")
def rename_device(
    request: Request,
    viewer: Homeowner,
    home_ref: str,
    device_ref: str,
    name: Annotated[str, Form(max_length=64)],
) -> Response:
    changes = DevicePatch(name=name).model_dump(exclude_unset=True)
    with broker_of(request).unit_of_work() as uow:
        homes_service.update_device(uow, viewer, home_ref, device_ref, changes)
    return _back(home_ref)


@router.post("/homes/{home_ref}/devices/{device_ref}/remove")
def remove_device(request: Request, viewer: Homeowner, home_ref: str, device_ref: str) -> Response:
    with broker_of(request).unit_of_work() as uow:
        homes_service.remove_device(uow, viewer, home_ref, device_ref)
    return _back(home_ref)


def _auto_rules(text: str) -> list[Any]:
    try:
        rules = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise PolicyError(
            f"auto-approve rules are not valid JSON: {exc.msg} (line {exc.lineno})"
        ) from None
    if not isinstance(rules, list):
        raise PolicyError("auto-approve rules must be a JSON list")
    return rules


@router.post("/homes/{home_ref}/policy")
def set_policy(
    request: Request,
    viewer: Homeowner,
    home_ref: str,
    max_minutes: Annotated[int, Form(ge=1, le=480)],
    technicians: Annotated[str, Form(max_length=8000)] = "",
    auto_approve: Annotated[str, Form(max_length=16000)] = "[]",
    require_totp: Annotated[str, Form(max_length=8)] = "",
    step_up: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Duration cap, who may ask, what needs no human, and TOTP for approvals, in one go;
    what lets more in needs the step-up field (code or password)."""
    broker = broker_of(request)
    proof = stepup.proof_for(broker, viewer, step_up.strip() or None)
    with broker.read() as db:
        home = homes.get_home(db, viewer, home_ref)
    policy = {
        **(home["policy"] or {}),
        "max_duration_s": max_minutes * 60,
        "technicians": [line.strip() for line in technicians.splitlines() if line.strip()],
        "auto_approve": _auto_rules(auto_approve),
    }
    with broker.unit_of_work() as uow:
        homes_service.set_policy(uow, viewer, home["id"], policy, proof)
    changes = {"require_totp_for_approval": bool(require_totp)}
    homes_service.update_home(broker, viewer, home["id"], changes, proof)
    return _back(home["id"])
