"""The technician's pages: ask for access, follow the answer."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker import sessions_service
from broker.auth import broker_of
from broker.reads import homes as home_reads
from broker.schemas import MAX_GRANTS, NewSession
from netpolicy import PolicyError

from .deps import Technician
from .queries import DURATION_CHOICES, session_cards
from .render import page

router = APIRouter()


@router.get("/tech")
def my_requests(request: Request, viewer: Technician) -> Response:
    states = ("requested", "approved", "active", "ended")
    cards = session_cards(request, viewer, *states)
    return page(request, "tech.html", {"title": "My requests", "cards": cards})


@router.get("/tech/new")
def new_request(request: Request, viewer: Technician, home: str = "") -> Response:
    with broker_of(request).read() as db:
        homes = home_reads.list_homes(db, viewer)["homes"]
        chosen = next((h for h in homes if home in (h["id"], h["name"])), None)
        if chosen is None and len(homes) == 1:
            chosen = homes[0]
        devices = home_reads.list_devices(db, viewer, chosen["id"])["devices"] if chosen else []
    context = {
        "title": "Ask for access",
        "homes": homes,
        "chosen": chosen,
        "devices": devices,
        "durations": DURATION_CHOICES,
    }
    return page(request, "tech_new.html", context)


def grant_texts(devices: list[str], proto: str, ports: str) -> list[str]:
    """Every selected device with every port typed (``443, 8000-8010``) as API grant strings."""
    wanted = [p for p in re.split(r"[,\s]+", ports.strip()) if p]
    if not devices:
        raise PolicyError("choose at least one device")
    if not wanted:
        raise PolicyError("enter at least one port, like 443 or 8000-8010")
    texts = [f"{device}:{proto}/{port}" for device in devices for port in wanted]
    if len(texts) > MAX_GRANTS:
        raise PolicyError(f"at most {MAX_GRANTS} device and port combinations per request")
    return texts


@router.post("/tech/requests")
def submit_request(
    request: Request,
    viewer: Technician,
    home: Annotated[str, Form(max_length=64)],
    ports: Annotated[str, Form(max_length=200)],
    duration_s: Annotated[int, Form(gt=0)],
    reason: Annotated[str, Form(min_length=1, max_length=500)],
    proto: Annotated[str, Form(pattern="^(tcp|udp)$")] = "tcp",
    devices: Annotated[list[str] | None, Form()] = None,
    public_key: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    body = NewSession(
        home=home,
        grants=grant_texts(devices or [], proto, ports),
        duration_s=duration_s,
        reason=reason.strip(),
        public_key=public_key.strip() or None,
    )
    session = broker_of(request).run(
        lambda uow: sessions_service.request_access(
            uow, viewer, body.home, body.grants, body.duration_s, body.reason, body.public_key
        )
    )
    return RedirectResponse(f"/web/sessions/{session['id']}", status_code=303)
