"""The expiry job: end sessions whose time is up, and sign the audit chain's tip.

Safe to run in several processes at once: each session is ended by a conditional
``UPDATE ... WHERE state IN (live) AND expires_at <= now``, and only the process whose
update matched a row writes the audit event and bumps the revision. The kernel already
dropped the access at ``expires_at`` (nft element timeouts); this keeps records true.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from . import audit
from .context import Broker, UnitOfWork
from .db.models import LIVE_STATES, AccessSession
from .sessions_service import end

ACTOR = "broker:expiry"


def _due(uow: UnitOfWork) -> object:
    stale_request = uow.now - timedelta(seconds=uow.broker.settings.request_ttl_s)
    return or_(
        and_(AccessSession.state.in_(LIVE_STATES), AccessSession.expires_at <= uow.now),
        and_(AccessSession.state == "requested", AccessSession.requested_at <= stale_request),
    )


def expire_session_if_due(uow: UnitOfWork, session_id: str) -> bool:
    """End one overdue session; False if it is not due or another process got there first.

    Setting ``end_reason`` is the claim; the rest of the ending happens in ``end``.
    """
    claimed = uow.db.execute(
        update(AccessSession)
        .where(AccessSession.id == session_id, AccessSession.end_reason.is_(None), _due(uow))  # type: ignore[arg-type]
        .values(end_reason="expired")
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session = uow.db.get(AccessSession, session_id, populate_existing=True)
    assert session is not None
    end(uow, session, "expired", ACTOR)
    return True


def expire_due(uow: UnitOfWork) -> int:
    due = uow.db.scalars(select(AccessSession.id).where(_due(uow))).all()  # type: ignore[arg-type]
    return sum(expire_session_if_due(uow, session_id) for session_id in due)


def run_maintenance(broker: Broker) -> dict[str, int]:
    """One pass of the periodic job inside ``serve``; tests call it after moving the clock."""
    expired = broker.run(expire_due)
    with broker.unit_of_work() as uow:
        point = audit.checkpoint(uow.db, uow.now, broker.signer)
    return {"expired": expired, "checkpoint": point.seq if point else 0}
