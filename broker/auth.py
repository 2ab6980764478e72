"""Who is calling: API tokens for people and scripts, client certificates for agents.

``current_user`` and ``current_agent`` are the only places a request's identity is decided.
Both use their own short transaction, so nothing holds a database lock while a long-poll
waits. Agents have no bearer fallback: a leaked bearer string would outlive the
certificate's 24 h and its private key never leaving the router.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from fastapi import Request
from sqlalchemy import Connection, bindparam, or_, select, update
from sqlalchemy.orm import Session

from .context import Broker
from .db.models import Agent, AgentCertificate, ApiToken, Home, User, table_of
from .errors import ApiError
from .ids import digest
from .pki import AgentIdentity
from .tls_server import peer_agent

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
TOTP_STEP_S = 30
_TOTP_CODE = re.compile(r"[0-9]{6}")
LAST_SEEN_RESOLUTION = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in person, detached from any database session."""

    id: str
    email: str
    role: str
    token_id: str = ""  # the API token this request came with (tokens it mints die with it)

    @property
    def actor(self) -> str:
        return f"user:{self.id}"

    @property
    def identities(self) -> tuple[str, str]:
        """What a home policy may name a technician by."""
        return (self.id, self.email)


@dataclass(frozen=True, slots=True)
class AgentPrincipal:
    agent_id: str
    home_id: str
    serial: str  # of the certificate this request came with

    @property
    def actor(self) -> str:
        return f"agent:{self.agent_id}"


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${key}".format(
        **_SCRYPT, salt=base64.b64encode(salt).decode(), key=base64.b64encode(key).decode()
    )


_DUMMY_HASH = hash_password(os.urandom(16).hex())


def check_password(password: str, stored: str | None) -> bool:
    """Constant work whether or not the user has a password, so timing reveals nothing."""
    scheme, n, r, p, salt, key = (stored or _DUMMY_HASH).split("$")
    if scheme != "scrypt":
        return False
    derived = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return stored is not None and hmac.compare_digest(derived, base64.b64decode(key))


def accept_totp(user: User, code: str | None, now: datetime) -> bool:
    """A current code (±1 step for clock drift), each step usable once: no replays."""
    if not user.totp_secret or not code or not _TOTP_CODE.fullmatch(code):
        return False  # never hand a non-ASCII string to compare_digest (TypeError: a 500)
    totp = pyotp.TOTP(user.totp_secret)
    current = int(now.timestamp()) // TOTP_STEP_S
    for step in (current - 1, current, current + 1):
        if step > user.totp_last_step and hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
            user.totp_last_step = step
            return True
    return False


def totp_uri(secret: str, email: str) -> str:
    """What an authenticator app scans to add this account."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name="ztb")


def bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token (Authorization: Bearer TOKEN)")
    return token.strip()


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


# Built once: SQLAlchemy memoizes a statement's cache key, so a reused statement skips
# both construction and key generation on the hot path.
_TOKEN_OWNER = (
    select(
        User.id,
        User.email,
        User.role,
        ApiToken.id.label("token_id"),
        ApiToken.revoked_at,
        ApiToken.expires_at,
    )
    .join(ApiToken, ApiToken.user_id == User.id)
    .where(ApiToken.token_hash == bindparam("digest"))
)


def principal_for_token(broker: Broker, token: str) -> Principal | None:
    """The live token's owner: one indexed read in a read-only transaction (no write lock,
    no ORM), because every API request pays for it."""
    with broker.read_rows() as connection:
        row = connection.execute(_TOKEN_OWNER, {"digest": digest(token)}).first()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= broker.clock():
        return None
    return Principal(id=row.id, email=row.email, role=row.role, token_id=row.token_id)


def current_user(request: Request) -> Principal:
    principal = principal_for_token(broker_of(request), bearer(request))
    if principal is None:
        raise ApiError(401, "token is unknown, expired or revoked")
    return principal


def accepted_agent(db: Session, identity: AgentIdentity, now: datetime) -> Agent | None:
    """The agent row a verified certificate speaks for, or None (unknown, revoked, replaced).

    The current serial is good; after a renewal the previous one is too, until the new one
    is first seen. Notes when the agent was last seen (at most every few seconds: a write).
    """
    agent = db.get(Agent, identity.agent_id)
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


_AGENTS = table_of(Agent)
_HOMES = table_of(Home)
_AGENT_STANDING = select(
    _AGENTS.c.home_id,
    _AGENTS.c.revoked_at,
    _AGENTS.c.cert_serial,
    _AGENTS.c.previous_cert_serial,
    _AGENTS.c.last_seen_at,
).where(_AGENTS.c.id == bindparam("agent_id"))
_STANDING_AND_REVISION = select(
    _AGENTS.c.revoked_at, _AGENTS.c.cert_serial, _AGENTS.c.previous_cert_serial, _HOMES.c.revision
).where(
    _AGENTS.c.id == bindparam("agent_id"),
    _HOMES.c.id == _AGENTS.c.home_id,
    _HOMES.c.id == bindparam("home_id"),
)
_SEEN = (
    update(_AGENTS)
    .where(
        _AGENTS.c.id == bindparam("agent_id"),
        or_(_AGENTS.c.last_seen_at.is_(None), _AGENTS.c.last_seen_at < bindparam("seen")),
    )
    .values(last_seen_at=bindparam("seen"))
)


def current_agent(request: Request) -> AgentPrincipal:
    """The calling agent, from its client certificate (verified by the TLS layer, see
    ``broker.tls_server``), checked against the agents table on every request, so a
    revocation cuts the agent off at once, even on a kept-alive connection.

    A read: only the first use of a new certificate writes (it retires the previous one);
    the last-seen time goes to ``broker.last_seen`` and is written in batches."""
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


_HOME_AGENTS = select(_AGENTS.c.id, _AGENTS.c.cert_serial, _AGENTS.c.previous_cert_serial).where(
    _AGENTS.c.home_id == bindparam("home_id"), _AGENTS.c.revoked_at.is_(None)
)
_REVISION = select(_HOMES.c.revision).where(_HOMES.c.id == bindparam("home_id"))


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
