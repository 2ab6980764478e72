"""Sessions a caller may see, one session, and the homeowner's report of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ..access import home_for, session_for
from ..audit import digest_covering, event_dict
from ..auth import Principal
from ..clock import rfc3339
from ..counters import grant_usage
from ..db.models import AccessSession, AuditEvent, Home, User
from ..views import session_view
from .names import names_for, names_of_sessions, session_names

LIST_LIMIT = 1000


def _visible(principal: Principal) -> Select[AccessSession]:
    query = select(AccessSession).order_by(AccessSession.requested_at.desc())
    if principal.role == "technician":
        return query.where(AccessSession.technician_id == principal.id)
    if principal.role == "homeowner":
        owned = select(Home.id).where(Home.owner_id == principal.id)
        return query.where(AccessSession.home_id.in_(owned))
    return query


def list_sessions(
    db: Session, principal: Principal, home: str | None = None, state: str | None = None
) -> dict[str, Any]:
    """Newest first: a technician's own, a homeowner's homes', everything for admins."""
    query = _visible(principal)
    if home is not None:
        found = home_for(db, principal, home, "session.list", as_technician=True)
        query = query.where(AccessSession.home_id == found.id)
    if state is not None:
        query = query.where(AccessSession.state == state)
    views = [session_view(s) for s in db.scalars(query.limit(LIST_LIMIT))]
    return {"sessions": names_of_sessions(db, views)}


def get_session(db: Session, principal: Principal, session_id: str) -> dict[str, Any]:
    view = session_view(session_for(db, principal, session_id, "session.read"))
    return names_of_sessions(db, [view])[0]


def _report(db: Session, session: AccessSession) -> dict[str, Any]:
    events = list(
        db.scalars(
            select(AuditEvent).where(AuditEvent.object == session.id).order_by(AuditEvent.seq)
        )
    )
    timeline = [
        {k: v for k, v in event_dict(e).items() if k not in ("prev_hash", "hash")} for e in events
    ]
    view = session_view(session)
    names = names_for(
        db,
        home_ids=[session.home_id],
        user_ids=[session.technician_id],
        actors=[session.approved_by, session.ended_by, *(e["actor"] for e in timeline)],
    )
    return {
        "session": session_names(view, names),
        "approved_by": session.approved_by,
        "timeline": [{**e, "actor_name": names.actor(e["actor"])} for e in timeline],
        "grants": grant_usage(session.grants, session.counters),
        "last_handshake": rfc3339(session.last_handshake),
        # A witness digest the homeowner can keep: ``ztb audit verify --against``.
        "audit": digest_covering(db, events[-1]) if events else None,
    }


def report(db: Session, principal: Principal, session_id: str) -> dict[str, Any]:
    """Timeline (the session's audit events), per-grant usage and the last handshake."""
    return _report(db, session_for(db, principal, session_id, "session.report"))


@dataclass(frozen=True, slots=True)
class Listed:
    """One visible session with the names a person reads it by, for the web pages."""

    session: dict[str, Any]
    home_name: str
    needs_totp: bool  # approving needs a fresh TOTP code
    technician_email: str | None
    usage: list[dict[str, Any]]  # per grant; empty unless asked for
    last_handshake: str | None


def listed(
    db: Session,
    principal: Principal,
    states: Sequence[str],
    *,
    session_ids: Sequence[str] | None = None,
    with_usage: bool = False,
) -> list[Listed]:
    """Visible sessions in ``states`` (newest first) with home and technician, read in
    three queries however many sessions there are."""
    query = _visible(principal).where(AccessSession.state.in_(states))
    if session_ids is not None:
        query = query.where(AccessSession.id.in_(session_ids))
    found = list(db.scalars(query.limit(LIST_LIMIT)))
    home_ids = {s.home_id for s in found}
    user_ids = {s.technician_id for s in found}
    homes = {h.id: h for h in db.scalars(select(Home).where(Home.id.in_(home_ids)))}
    rows = db.execute(select(User.id, User.email).where(User.id.in_(user_ids)))
    emails = {row.id: row.email for row in rows}
    result = []
    for session in found:
        home = homes.get(session.home_id)
        result.append(
            Listed(
                session=session_view(session),
                home_name=home.name if home else session.home_id,
                needs_totp=bool(home and home.require_totp_for_approval),
                technician_email=emails.get(session.technician_id),
                usage=grant_usage(session.grants, session.counters) if with_usage else [],
                last_handshake=rfc3339(session.last_handshake),
            )
        )
    return result
