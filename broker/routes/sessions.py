"""Access sessions: request, decide, end, escalate, download the config, read the report."""

from __future__ import annotations

import io
from ipaddress import IPv4Address, ip_address
from typing import Annotated, Any

import segno
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select

from netpolicy import Grant
from netpolicy.wgquick import TechnicianConfig, render_wg_quick

from .. import expiry
from .. import sessions_service as service
from ..access import home_for, require_role, session_for
from ..audit import event_dict
from ..auth import Principal, accept_totp, broker_of, current_user
from ..clock import rfc3339
from ..context import Broker, UnitOfWork
from ..db.models import LIVE_STATES, AccessSession, AuditEvent, Home, User
from ..errors import ApiError, denied
from ..schemas import Approval, MoreGrants, NewSession, Reason
from ..views import session_view

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
Me = Annotated[Principal, Depends(current_user)]
DECIDERS = ("admin", "homeowner")


def _expire_if_due(broker: Broker, session_id: str) -> None:
    """Decisions on an overdue session see it ended, even before the periodic job ran.

    A cheap read first: only an overdue session costs a write transaction."""
    with broker.read_rows() as connection:
        due = expiry.is_overdue(connection, broker.clock(), broker.settings, session_id)
    if due:
        broker.run(lambda uow: expiry.expire_session_if_due(uow, session_id))


def new_session(request: Request, principal: Principal, body: NewSession) -> dict[str, Any]:
    """A technician's request (the API route and the web form both come here)."""
    require_role(principal, ["technician"], "session.request")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        home = home_for(uow.db, principal, body.home, "session.request", as_technician=True)
        session = service.request_session(
            uow, principal, home, body.grants, body.duration_s, body.reason, body.public_key
        )
        return session_view(session)

    return broker_of(request).run(work)


# The lifecycle routes hand FastAPI a finished JSONResponse: a plain dict would be
# validated against ``dict[str, Any]`` and encoded in one more worker-thread hop.
@router.post("", status_code=201)
def request_session(request: Request, principal: Me, body: NewSession) -> JSONResponse:
    return JSONResponse(new_session(request, principal, body), 201)


@router.get("")
def list_sessions(
    request: Request, principal: Me, home: str | None = None, state: str | None = None
) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        query = select(AccessSession).order_by(AccessSession.requested_at.desc())
        if principal.role == "technician":
            query = query.where(AccessSession.technician_id == principal.id)
        elif principal.role == "homeowner":
            owned = select(Home.id).where(Home.owner_id == principal.id)
            query = query.where(AccessSession.home_id.in_(owned))
        if home is not None:
            found = home_for(uow.db, principal, home, "session.list", as_technician=True)
            query = query.where(AccessSession.home_id == found.id)
        if state is not None:
            query = query.where(AccessSession.state == state)
        return {"sessions": [session_view(s) for s in uow.db.scalars(query.limit(1000))]}


@router.get("/{session_id}")
def get_session(request: Request, principal: Me, session_id: str) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        return session_view(session_for(uow.db, principal, session_id, "session.read"))


def _check_step_up(uow: UnitOfWork, principal: Principal, home: Home, code: str | None) -> None:
    if not home.require_totp_for_approval:
        return
    user = uow.db.get(User, principal.id)
    assert user is not None
    if not user.totp_enabled:
        raise ApiError(403, "this home requires TOTP to approve; enable TOTP first")
    if not accept_totp(user, code, uow.now):
        raise denied(
            403,
            "a fresh TOTP code is required to approve",
            principal.actor,
            "session.approve",
            home.id,
        )


@router.post("/{session_id}/approve")
def approve(
    request: Request, principal: Me, session_id: str, body: Approval | None = None
) -> JSONResponse:
    body = body or Approval()
    broker = broker_of(request)
    _expire_if_due(broker, session_id)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        session = session_for(uow.db, principal, session_id, "session.approve")
        require_role(principal, DECIDERS, "session.approve", session.id)
        home = uow.db.get(Home, session.home_id)
        assert home is not None
        _check_step_up(uow, principal, home, body.totp)
        return session_view(service.approve(uow, principal, session, body.duration_s))

    return JSONResponse(broker.run(work))


@router.post("/{session_id}/deny")
def deny(
    request: Request, principal: Me, session_id: str, body: Reason | None = None
) -> dict[str, Any]:
    broker = broker_of(request)
    _expire_if_due(broker, session_id)
    with broker.unit_of_work() as uow:
        session = session_for(uow.db, principal, session_id, "session.deny")
        require_role(principal, DECIDERS, "session.deny", session.id)
        return session_view(service.deny(uow, principal, session, (body or Reason()).reason))


@router.post("/{session_id}/revoke")
def revoke(
    request: Request, principal: Me, session_id: str, body: Reason | None = None
) -> JSONResponse:
    broker = broker_of(request)
    _expire_if_due(broker, session_id)
    with broker.unit_of_work() as uow:
        session = session_for(uow.db, principal, session_id, "session.revoke")
        ended = session_view(service.revoke(uow, principal, session, (body or Reason()).reason))
    return JSONResponse(ended)


@router.post("/{session_id}/cancel")
def cancel(request: Request, principal: Me, session_id: str) -> dict[str, Any]:
    broker = broker_of(request)
    _expire_if_due(broker, session_id)
    with broker.unit_of_work() as uow:
        session = session_for(uow.db, principal, session_id, "session.cancel")
        require_role(principal, ["technician"], "session.cancel", session.id)
        return session_view(service.cancel(uow, principal, session))


@router.post("/{session_id}/grants")
def add_grants(
    request: Request, principal: Me, session_id: str, body: MoreGrants
) -> dict[str, Any]:
    broker = broker_of(request)
    _expire_if_due(broker, session_id)
    with broker.unit_of_work() as uow:
        session = session_for(uow.db, principal, session_id, "session.grants")
        require_role(principal, ["technician"], "session.grants", session.id)
        return session_view(service.add_grants(uow, principal, session, body.grants))


@router.get("/{session_id}/wg-quick")
def wg_quick(
    request: Request,
    principal: Me,
    session_id: str,
    format: Annotated[str, Query(pattern="^(text|qr-svg)$")] = "text",
) -> Response:
    """The technician's config; a broker-made private key is in the first download only."""
    with broker_of(request).unit_of_work() as uow:
        session = session_for(uow.db, principal, session_id, "session.config")
        if session.technician_id != principal.id:
            raise denied(
                403,
                "only the session's technician can download its config",
                principal.actor,
                "session.config",
                session.id,
            )
        if session.state not in LIVE_STATES or service.is_overdue(uow, session):
            raise denied(
                409,
                f"session is {session.state}, not live",
                principal.actor,
                "session.config",
                session.id,
            )
        home = uow.db.get(Home, session.home_id)
        assert home is not None and session.tunnel_ip is not None
        if not home.agent_public_key or not home.endpoint:
            raise ApiError(409, "the home's agent has no public key or endpoint yet (enroll it)")
        tunnel_ip = ip_address(session.tunnel_ip)
        assert isinstance(tunnel_ip, IPv4Address)
        private_key, session.private_key_once = session.private_key_once, None
        text = render_wg_quick(
            TechnicianConfig(
                private_key=private_key,
                tunnel_ip=tunnel_ip,
                router_public_key=home.agent_public_key,
                endpoint=home.endpoint,
                grants=tuple(Grant.from_dict(g) for g in session.grants),
                preshared_key=session.preshared_key,
            )
        )
        session.config_downloads += 1
        uow.audit(
            principal.actor,
            "session.config_downloaded",
            session.id,
            {"private_key_revealed": private_key is not None, "format": format},
        )
    headers = {"X-Ztb-Private-Key": "included" if private_key else "withheld"}
    if format == "qr-svg":
        buffer = io.BytesIO()
        segno.make(text, error="l").save(buffer, kind="svg", scale=4)
        return Response(buffer.getvalue(), media_type="image/svg+xml", headers=headers)
    return Response(text, media_type="text/plain; charset=utf-8", headers=headers)


@router.get("/{session_id}/report")
def report(request: Request, principal: Me, session_id: str) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        session = session_for(uow.db, principal, session_id, "session.report")
        events = uow.db.scalars(
            select(AuditEvent).where(AuditEvent.object == session.id).order_by(AuditEvent.seq)
        )
        timeline = [
            {k: v for k, v in event_dict(e).items() if k not in ("prev_hash", "hash")}
            for e in events
        ]
        return {
            "session": session_view(session),
            "approved_by": session.approved_by,
            "timeline": timeline,
            "grants": grant_usage(session),
            "last_handshake": rfc3339(session.last_handshake),
        }


def grant_usage(session: AccessSession) -> list[dict[str, Any]]:
    """Per-grant packets/bytes: the agent's element counters summed into each grant."""
    usage = []
    for stored in session.grants:
        grant = Grant.from_dict(stored)
        packets = octets = 0
        for key, value in session.counters.items():
            device_ip, _, rest = key.partition(" ")
            proto, _, ports = rest.partition("/")
            first = int(ports.partition("-")[0] or 0)
            if device_ip == str(grant.device_ip) and proto == grant.proto and first in grant.ports:
                packets += int(value["packets"])
                octets += int(value["bytes"])
        usage.append({"grant": str(grant), **stored, "packets": packets, "bytes": octets})
    return usage
