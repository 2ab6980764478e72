"""One session: its report, the decisions on it, and the technician's config download."""

from __future__ import annotations

import base64
import io
from typing import Annotated

import segno
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker import sessions_service
from broker.auth import broker_of
from broker.reads import sessions

from .deps import Technician, Viewer
from .queries import actor_names, session_cards, when
from .render import page

router = APIRouter()

Back = Annotated[str, Form(max_length=512)]


def _back(target: str, fallback: str) -> RedirectResponse:
    return RedirectResponse(target if target.startswith("/web/") else fallback, status_code=303)


@router.get("/sessions/{session_id}")
def report_page(request: Request, viewer: Viewer, session_id: str) -> Response:
    with broker_of(request).read() as db:
        report = sessions.report(db, viewer, session_id)
        session = report["session"]
        actors = [e["actor"] for e in report["timeline"]] + [
            session["approved_by"],
            session["ended_by"],
        ]
        names = actor_names(db, viewer, actors)
    cards = session_cards(request, viewer, session["state"], session_ids=[session_id])
    context = {
        "title": f"Session {session_id}",
        "names": names,
        "report": report,
        "s": session,
        "card": cards[0] if cards else None,
        "ended_at": when(session["ended_at"]),
    }
    return page(request, "report.html", context)


@router.post("/sessions/{session_id}/approve")
def approve(
    request: Request,
    viewer: Viewer,
    session_id: str,
    duration_s: Annotated[int | None, Form(gt=0)] = None,
    totp: Annotated[str, Form(max_length=10)] = "",
    back: Back = "/web/requests",
) -> Response:
    """Approve as asked or for a shorter time; also re-approves a pending escalation."""
    broker = broker_of(request)
    sessions_service.approve(broker, viewer, session_id, duration_s, totp.strip() or None)
    return _back(back, "/web/active")


@router.post("/sessions/{session_id}/deny")
def deny(
    request: Request, viewer: Viewer, session_id: str, back: Back = "/web/requests"
) -> Response:
    sessions_service.deny(broker_of(request), viewer, session_id, "denied on the web page")
    return _back(back, "/web/requests")


@router.post("/sessions/{session_id}/revoke")
def end_now(request: Request, viewer: Viewer, session_id: str) -> Response:
    sessions_service.revoke(broker_of(request), viewer, session_id, "ended on the web page")
    return RedirectResponse(f"/web/sessions/{session_id}", status_code=303)


@router.post("/sessions/{session_id}/cancel")
def cancel(request: Request, viewer: Technician, session_id: str) -> Response:
    sessions_service.cancel(broker_of(request), viewer, session_id)
    return RedirectResponse("/web/tech", status_code=303)


@router.get("/sessions/{session_id}/config")
def config_intro(request: Request, viewer: Technician, session_id: str) -> Response:
    with broker_of(request).read() as db:
        session = sessions.get_session(db, viewer, session_id)
    return page(
        request, "config_intro.html", {"title": "Get your WireGuard configuration", "s": session}
    )


@router.post("/sessions/{session_id}/config")
def config_reveal(request: Request, viewer: Technician, session_id: str) -> Response:
    """One download serves the file and the QR code, so a broker-made private key, shown
    only once, reaches both; nothing here keeps it."""
    with broker_of(request).unit_of_work() as uow:
        session = sessions.get_session(uow.db, viewer, session_id)
        download = sessions_service.download_config(uow, viewer, session_id, "text")
    text = download.text
    svg = io.BytesIO()
    segno.make(text, error="l").save(
        svg, kind="svg", scale=4, xmldecl=False, title="WireGuard configuration"
    )
    context = {
        "title": "Your WireGuard configuration",
        "s": session,
        "conf": text,
        "conf_b64": base64.b64encode(text.encode()).decode(),
        "filename": f"ztb-{session_id}.conf",
        "qr_svg": svg.getvalue().decode(),
        "key_included": download.private_key_included,
    }
    return page(request, "config.html", context)
