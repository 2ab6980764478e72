"""The homeowner's pages: requests waiting, sessions active now, history, the home itself."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker.routes import homes as api
from broker.schemas import DevicePatch, HomePatch, NewDevice
from netpolicy import PolicyError

from .deps import Homeowner
from .queries import audit_status, session_cards, shorter_durations, with_usage
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
    cards = with_usage(request, viewer, session_cards(request, viewer, "approved", "active"))
    return page(request, "active.html", {"title": "Active now", "cards": cards})


@router.get("/history")
def history(request: Request, viewer: Homeowner) -> Response:
    context = {
        "title": "History and reports",
        "cards": session_cards(request, viewer, "ended"),
        "audit": audit_status(request),
    }
    return page(request, "history.html", context)


@router.get("/homes")
def my_homes(request: Request, viewer: Homeowner) -> Response:
    homes = api.list_homes(request, viewer)["homes"]
    if len(homes) == 1:
        return RedirectResponse(f"/web/homes/{homes[0]['id']}", status_code=303)
    return page(request, "homes.html", {"title": "Homes", "homes": homes})


@router.get("/homes/{home_ref}")
def home_page(request: Request, viewer: Homeowner, home_ref: str) -> Response:
    home = api.get_home(request, viewer, home_ref)
    devices = api.list_devices(request, viewer, home["id"])["devices"]
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
    api.add_device(request, viewer, home_ref, NewDevice(name=name, ip=ip, mac=mac or None))
    return _back(home_ref)


@router.post("/homes/{home_ref}/devices/{device_ref}/rename")
def rename_device(
    request: Request,
    viewer: Homeowner,
    home_ref: str,
    device_ref: str,
    name: Annotated[str, Form(max_length=64)],
) -> Response:
    api.patch_device(request, viewer, home_ref, device_ref, DevicePatch(name=name))
    return _back(home_ref)


@router.post("/homes/{home_ref}/devices/{device_ref}/remove")
def remove_device(request: Request, viewer: Homeowner, home_ref: str, device_ref: str) -> Response:
    api.delete_device(request, viewer, home_ref, device_ref)
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
) -> Response:
    """Duration cap, who may ask, what needs no human, and TOTP for approvals, in one go."""
    home = api.get_home(request, viewer, home_ref)
    policy = {
        **(home["policy"] or {}),
        "max_duration_s": max_minutes * 60,
        "technicians": [line.strip() for line in technicians.splitlines() if line.strip()],
        "auto_approve": _auto_rules(auto_approve),
    }
    api.put_policy(request, viewer, home["id"], policy)
    api.patch_home(
        request, viewer, home["id"], HomePatch(require_totp_for_approval=bool(require_totp))
    )
    return _back(home["id"])
