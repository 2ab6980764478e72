"""The expiry job: end sessions whose time is up, and sign the audit chain's tip.

Safe to run in several processes at once: each session is ended by a conditional
``UPDATE ... WHERE state IN (live) AND expires_at <= now`` (``lifecycle_service``), and
only the process whose update matched a row writes the audit event and bumps the revision.
The kernel already dropped the access at ``expires_at`` (nft element timeouts); this keeps
records true.
"""

from __future__ import annotations

from sqlalchemy import select

from . import audit
from .agent_standing import write_last_seen
from .context import Broker, UnitOfWork
from .db.models import AccessSession
from .lifecycle_service import DUE, due_params, expire_if_due

ACTOR = "broker:expiry"


def expire_due(uow: UnitOfWork) -> int:
    params = due_params(uow.now, uow.broker.settings)
    # One order everywhere: two brokers claiming the same rows then wait, never deadlock.
    due = uow.db.scalars(
        select(AccessSession.id).where(DUE).order_by(AccessSession.id), params
    ).all()
    return sum(expire_if_due(uow, session_id, ACTOR) for session_id in due)


def run_maintenance(broker: Broker) -> dict[str, int]:
    """One pass of the periodic job inside ``serve``; tests call it after moving the clock."""
    expired = broker.run(expire_due)
    try:
        point = audit.sign_tip(broker)
    except audit.ChainBroken:
        point = None  # logged and counted; nothing is signed until an operator looks
    seen = write_last_seen(broker)
    return {"expired": expired, "checkpoint": point["seq"] if point else 0, "agents_seen": seen}
