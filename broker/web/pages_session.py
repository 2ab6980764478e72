"""One session: its report, the decisions on it, and the technician's config download."""

from __future__ import annotations

import base64
import io
from typing import Annotated

import segno
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker.routes import sessions as api
from broker.schemas import Approval, Reason

from .deps import Technician, Viewer
from .queries import actor_names, company_of, session_cards, when
from .render import page

router = APIRouter()

Back = Annotated[str, Form(max_length=512)]


def _back(target: str, fallback: str) -> RedirectResponse:
    return RedirectResponse(target if target.startswith("/web/") else fallback, status_code=303)


@router.get("/sessions/{session_id}")
def report_page(request: Request, viewer: Viewer, session_id: str) -> Response:
    report = api.report(request, viewer, session_id)
    session = report["session"]
    card = next(
        (c for c in session_cards(request, viewer, session["state"]) if c["s"]["id"] == session_id),
        None,
    )
    actors = [e["actor"] for e in report["timeline"]] + [
        session["approved_by"],
        session["ended_by"],
    ]
    context = {
        "title": f"Session {session_id}",
        "names": actor_names(request, viewer, actors),
        "report": report,
        "s": session,
        "card": card,
        "company_of": company_of,
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
    body = Approval(duration_s=duration_s, totp=totp.strip() or None)
    api.approve(request, viewer, session_id, body)
    return _back(back, "/web/active")


@router.post("/sessions/{session_id}/deny")
def deny(
    request: Request, viewer: Viewer, session_id: str, back: Back = "/web/requests"
) -> Response:
    api.deny(request, viewer, session_id, Reason(reason="denied on the web page"))
    return _back(back, "/web/requests")


@router.post("/sessions/{session_id}/revoke")
def end_now(request: Request, viewer: Viewer, session_id: str) -> Response:
    api.revoke(request, viewer, session_id, Reason(reason="ended on the web page"))
    return RedirectResponse(f"/web/sessions/{session_id}", status_code=303)


@router.post("/sessions/{session_id}/cancel")
def cancel(request: Request, viewer: Technician, session_id: str) -> Response:
    api.cancel(request, viewer, session_id)
    return RedirectResponse("/web/tech", status_code=303)


@router.get("/sessions/{session_id}/config")
def config_intro(request: Request, viewer: Technician, session_id: str) -> Response:
    session = api.get_session(request, viewer, session_id)
    return page(
        request, "config_intro.html", {"title": "Get your WireGuard configuration", "s": session}
    )


@router.post("/sessions/{session_id}/config")
def config_reveal(request: Request, viewer: Technician, session_id: str) -> Response:
    """One download serves the file and the QR code, so a broker-made private key, shown
    only once, reaches both; nothing here keeps it."""
    session = api.get_session(request, viewer, session_id)
    download = api.wg_quick(request, viewer, session_id, format="text")
    text = bytes(download.body).decode()
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
        "key_included": download.headers.get("x-ztb-private-key") == "included",
    }
    return page(request, "config.html", context)
