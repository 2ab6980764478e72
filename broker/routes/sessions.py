"""Access sessions: request, decide, end, escalate, download the config, read the report
(HTTP adapters of ``sessions_service`` and ``reads.sessions``)."""

from __future__ import annotations

import io
from typing import Annotated, Any

import segno
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from .. import sessions_service as service
from ..auth import Principal, broker_of, current_user
from ..reads import sessions
from ..schemas import Approval, MoreGrants, NewSession, Reason

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
Me = Annotated[Principal, Depends(current_user)]


# The lifecycle routes hand FastAPI a finished JSONResponse: a plain dict would be
# validated against ``dict[str, Any]`` and encoded in one more worker-thread hop.
@router.post("", status_code=201)
def request_session(request: Request, principal: Me, body: NewSession) -> JSONResponse:
    created = broker_of(request).run(
        lambda uow: service.request_access(
            uow, principal, body.home, body.grants, body.duration_s, body.reason, body.public_key
        )
    )
    return JSONResponse(created, 201)


@router.get("")
def list_sessions(
    request: Request, principal: Me, home: str | None = None, state: str | None = None
) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return sessions.list_sessions(db, principal, home, state)


@router.get("/{session_id}")
def get_session(request: Request, principal: Me, session_id: str) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return sessions.get_session(db, principal, session_id)


@router.post("/{session_id}/approve")
def approve(
    request: Request, principal: Me, session_id: str, body: Approval | None = None
) -> JSONResponse:
    body = body or Approval()
    broker = broker_of(request)
    return JSONResponse(service.approve(broker, principal, session_id, body.duration_s, body.totp))


@router.post("/{session_id}/deny")
def deny(
    request: Request, principal: Me, session_id: str, body: Reason | None = None
) -> dict[str, Any]:
    reason = (body or Reason()).reason
    return service.deny(broker_of(request), principal, session_id, reason)


@router.post("/{session_id}/revoke")
def revoke(
    request: Request, principal: Me, session_id: str, body: Reason | None = None
) -> JSONResponse:
    reason = (body or Reason()).reason
    return JSONResponse(service.revoke(broker_of(request), principal, session_id, reason))


@router.post("/{session_id}/cancel")
def cancel(request: Request, principal: Me, session_id: str) -> dict[str, Any]:
    return service.cancel(broker_of(request), principal, session_id)


@router.post("/{session_id}/grants")
def add_grants(
    request: Request, principal: Me, session_id: str, body: MoreGrants
) -> dict[str, Any]:
    return service.add_grants(broker_of(request), principal, session_id, body.grants)


@router.get("/{session_id}/wg-quick")
def wg_quick(
    request: Request,
    principal: Me,
    session_id: str,
    format: Annotated[str, Query(pattern="^(text|qr-svg)$")] = "text",
) -> Response:
    """The technician's config; a broker-made private key is in the first download only."""
    with broker_of(request).unit_of_work() as uow:
        download = service.download_config(uow, principal, session_id, format)
    key = "included" if download.private_key_included else "withheld"
    headers = {"X-Ztb-Private-Key": key}
    if format == "qr-svg":
        buffer = io.BytesIO()
        segno.make(download.text, error="l").save(buffer, kind="svg", scale=4)
        return Response(buffer.getvalue(), media_type="image/svg+xml", headers=headers)
    return Response(download.text, media_type="text/plain; charset=utf-8", headers=headers)


@router.get("/{session_id}/report")
def report(request: Request, principal: Me, session_id: str) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return sessions.report(db, principal, session_id)
