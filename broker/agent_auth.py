"""Which agent is calling: its client certificate, checked against the agents table.

The TLS layer (``broker.tls_server``) proves only that the certificate chains to the CA and
is current; here it is looked up on *every* request (agent in that home, not revoked,
current serial — or the previous one after a renewal until the new one is first seen), so
a revocation cuts the agent off at once, even on a kept-alive connection. Agents have no
bearer fallback: a leaked bearer string would outlive the certificate's 24 h and its
private key never leaving the router.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import Request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .agent_standing import AGENTS, LAST_SEEN_RESOLUTION
from .auth import AgentPrincipal, broker_of
from .db.models import AgentCertificate, HomeAgent
from .errors import ApiError
from .pki import AgentIdentity
from .tls_server import peer_agent

_AGENT_STANDING = select(
    AGENTS.c.home_id,
    AGENTS.c.revoked_at,
    AGENTS.c.cert_serial,
    AGENTS.c.previous_cert_serial,
    AGENTS.c.last_seen_at,
).where(AGENTS.c.id == bindparam("agent_id"))


def accepted_agent(db: Session, identity: AgentIdentity, now: datetime) -> HomeAgent | None:
    """The agent row a verified certificate speaks for, or None (unknown, revoked, replaced).

    The current serial is good; after a renewal the previous one is too, until the new one
    is first seen. Notes when the agent was last seen (at most every few seconds: a write).
    """
    agent = db.get(HomeAgent, identity.agent_id)
    if agent is None or agent.home_id != identity.home_id or agent.revoked_at is not None:
        return None
    if identity.serial == agent.cert_serial:
        if agent.previous_cert_serial is not None or agent.last_seen_at is None:
            agent.previous_cert_serial = None
            certificate = db.get(AgentCertificate, identity.serial)
            if certificate is not None and certificate.first_seen_at is None:
                certificate.first_seen_at = now
    elif identity.serial != agent.previous_cert_serial:
        return None
    if agent.last_seen_at is None or now - agent.last_seen_at >= LAST_SEEN_RESOLUTION:
        agent.last_seen_at = now
    return agent


def current_agent(request: Request) -> AgentPrincipal:
    """The calling agent, or 401. A read: only the first use of a new certificate writes
    (it retires the previous one); the last-seen time goes to ``broker.last_seen`` and is
    written in batches (``agent_standing.write_last_seen``)."""
    broker = broker_of(request)
    now = broker.clock()
    identity = peer_agent(request, now)
    if identity is None:
        raise ApiError(401, "agent client certificate required (enroll with 'ztb agent enroll')")
    with broker.read_rows() as connection:
        row = connection.execute(_AGENT_STANDING, {"agent_id": identity.agent_id}).first()
    if (
        row is None
        or row.home_id != identity.home_id
        or row.revoked_at is not None
        or identity.serial not in (row.cert_serial, row.previous_cert_serial)
    ):
        raise ApiError(401, "agent certificate is unknown, replaced or revoked")
    if identity.serial == row.cert_serial and (
        row.previous_cert_serial is not None or row.last_seen_at is None
    ):
        with broker.unit_of_work() as uow:
            if accepted_agent(uow.db, identity, uow.now) is None:
                raise ApiError(401, "agent certificate is unknown, replaced or revoked")
    elif row.last_seen_at is None or now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
        broker.last_seen.note(identity.agent_id, now)
    return AgentPrincipal(
        agent_id=identity.agent_id, home_id=identity.home_id, serial=identity.serial
    )
