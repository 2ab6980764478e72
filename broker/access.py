"""Authorization: who may see which home and session, and what they may do with it.

Objects a caller may not see answer 404 exactly like objects that do not exist, so ids of
other homes and technicians leak nothing; the attempt is still written to the audit chain.
Visible objects with a forbidden action answer 403.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from netpolicy.policy import HomePolicy

from .auth import Principal
from .db.models import AccessSession, Home
from .errors import ApiError, denied


def require_role(principal: Principal, roles: Iterable[str], action: str, obj: str = "-") -> None:
    allowed = tuple(roles)
    if principal.role not in allowed:
        raise denied(
            403, f"{action} needs the role {' or '.join(allowed)}", principal.actor, action, obj
        )


def technician_may_request(home: Home, principal: Principal) -> bool:
    return HomePolicy.from_dict(home.policy).admits(principal.identities)


def can_see_home(principal: Principal, home: Home, *, as_technician: bool = False) -> bool:
    if principal.role == "admin":
        return True
    if principal.role == "homeowner":
        return home.owner_id == principal.id
    return as_technician and technician_may_request(home, principal)


def find_home(db: Session, ref: str) -> Home | None:
    """A home by id, or by its (unique) name."""
    return db.scalars(select(Home).where(or_(Home.id == ref, Home.name == ref))).first()


def home_for(
    db: Session, principal: Principal, ref: str, action: str, *, as_technician: bool = False
) -> Home:
    home = find_home(db, ref)
    if home is None:
        raise ApiError(404, "home not found")
    if not can_see_home(principal, home, as_technician=as_technician):
        raise denied(404, "home not found", principal.actor, action, home.id)
    return home


def can_see_session(db: Session, principal: Principal, session: AccessSession) -> bool:
    if principal.role == "admin":
        return True
    if principal.role == "technician":
        return session.technician_id == principal.id
    home = db.get(Home, session.home_id)
    return home is not None and home.owner_id == principal.id


def session_for(db: Session, principal: Principal, session_id: str, action: str) -> AccessSession:
    session = db.get(AccessSession, session_id)
    if session is None:
        raise ApiError(404, "session not found")
    if not can_see_session(db, principal, session):
        raise denied(404, "session not found", principal.actor, action, session.id)
    return session
