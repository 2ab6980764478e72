"""The expiry job: end sessions whose time is up, and sign the audit chain's tip.

Safe to run in several processes at once: each session is ended by a conditional
``UPDATE ... WHERE state IN (live) AND expires_at <= now``, and only the process whose
update matched a row writes the audit event and bumps the revision. The kernel already
dropped the access at ``expires_at`` (nft element timeouts); this keeps records true.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session

from . import audit
from .auth import write_last_seen
from .config import Settings
from .context import Broker, UnitOfWork
from .db.models import LIVE_STATES, AccessSession
from .sessions_service import end

ACTOR = "broker:expiry"


# Statements built once with bind parameters: SQLAlchemy memoizes a statement's cache key,
# so the per-request pre-check skips construction and key generation.
_DUE = or_(
    and_(AccessSession.state.in_(LIVE_STATES), AccessSession.expires_at <= bindparam("now")),
    and_(
        AccessSession.state == "requested",
        AccessSession.requested_at <= bindparam("stale_request"),
    ),
)
_THIS_ONE_DUE = and_(
    AccessSession.id == bindparam("session_id"), AccessSession.end_reason.is_(None), _DUE
)
_IS_OVERDUE = select(exists().where(_THIS_ONE_DUE))


def _due_params(now: datetime, settings: Settings, **more: str) -> dict[str, Any]:
    return {"now": now, "stale_request": now - timedelta(seconds=settings.request_ttl_s)} | more


def is_overdue(
    db: Session | Connection, now: datetime, settings: Settings, session_id: str
) -> bool:
    """The session is overdue and not yet ended: a read, for a cheap pre-check."""
    return bool(db.scalar(_IS_OVERDUE, _due_params(now, settings, session_id=session_id)))


def expire_session_if_due(uow: UnitOfWork, session_id: str) -> bool:
    """End one overdue session; False if it is not due or another process got there first.

    Setting ``end_reason`` is the claim; the rest of the ending happens in ``end``.
    """
    claimed = uow.db.execute(
        update(AccessSession)
        .where(_THIS_ONE_DUE)
        .values(end_reason="expired")
        .execution_options(synchronize_session=False),
        _due_params(uow.now, uow.broker.settings, session_id=session_id),
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session = uow.db.get(AccessSession, session_id, populate_existing=True)
    assert session is not None
    end(uow, session, "expired", ACTOR)
    return True


def expire_due(uow: UnitOfWork) -> int:
    params = _due_params(uow.now, uow.broker.settings)
    # One order everywhere: two brokers claiming the same rows then wait, never deadlock.
    due = uow.db.scalars(
        select(AccessSession.id).where(_DUE).order_by(AccessSession.id), params
    ).all()
    return sum(expire_session_if_due(uow, session_id) for session_id in due)


def run_maintenance(broker: Broker) -> dict[str, int]:
    """One pass of the periodic job inside ``serve``; tests call it after moving the clock."""
    expired = broker.run(expire_due)
    with broker.unit_of_work() as uow:
        point = audit.checkpoint(uow.db, uow.now, broker.signer)
    seen = write_last_seen(broker)
    return {"expired": expired, "checkpoint": point.seq if point else 0, "agents_seen": seen}
