"""Agents' standing as the long-polls read it, and their last-seen times as written.

The reads are plain Core statements built once: a revision bump wakes every agent of a
home, and they all pay for these. Last-seen times are noted in memory per request
(``state_cache.LastSeen``) and stored here in batches, so a poll makes no write.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, bindparam, or_, select, update

from .auth import AgentPrincipal
from .context import Broker
from .db.models import Home, HomeAgent, table_of

LAST_SEEN_RESOLUTION = timedelta(seconds=5)
AGENTS = table_of(HomeAgent)
_HOMES = table_of(Home)
_STANDING_AND_REVISION = select(
    AGENTS.c.revoked_at, AGENTS.c.cert_serial, AGENTS.c.previous_cert_serial, _HOMES.c.revision
).where(
    AGENTS.c.id == bindparam("agent_id"),
    _HOMES.c.id == AGENTS.c.home_id,
    _HOMES.c.id == bindparam("home_id"),
)
_HOME_AGENTS = select(AGENTS.c.id, AGENTS.c.cert_serial, AGENTS.c.previous_cert_serial).where(
    AGENTS.c.home_id == bindparam("home_id"), AGENTS.c.revoked_at.is_(None)
)
_REVISION = select(_HOMES.c.revision).where(_HOMES.c.id == bindparam("home_id"))
_SEEN = (
    update(AGENTS)
    .where(
        AGENTS.c.id == bindparam("agent_id"),
        or_(AGENTS.c.last_seen_at.is_(None), AGENTS.c.last_seen_at < bindparam("seen")),
    )
    .values(last_seen_at=bindparam("seen"))
)


def revision_if_still_accepted(connection: Connection, agent: AgentPrincipal) -> int | None:
    """For long-polls: the home's revision, or None once the agent was revoked or its
    certificate replaced while the request waited (the caller answers 401)."""
    row = connection.execute(
        _STANDING_AND_REVISION, {"agent_id": agent.agent_id, "home_id": agent.home_id}
    ).first()
    if (
        row is None
        or row.revoked_at is not None
        or agent.serial not in (row.cert_serial, row.previous_cert_serial)
    ):
        return None
    return int(row.revision)


def home_standing(connection: Connection, home_id: str) -> tuple[int, dict[str, set[str | None]]]:
    """For the long-polls one revision bump wakes together: the home's revision and, per
    unrevoked agent, the certificate serials it may still call with (one read for all)."""
    revision = connection.execute(_REVISION, {"home_id": home_id}).scalar_one()
    rows = connection.execute(_HOME_AGENTS, {"home_id": home_id})
    return int(revision), {row.id: {row.cert_serial, row.previous_cert_serial} for row in rows}


def write_last_seen(broker: Broker) -> int:
    """Store the last-seen times noted since the previous call (never moves one back)."""
    seen = broker.last_seen.take()
    if not seen:
        return 0
    with broker.unit_of_work() as uow:
        uow.db.connection().execute(
            _SEEN, [{"agent_id": agent_id, "seen": moment} for agent_id, moment in seen.items()]
        )
    return len(seen)
