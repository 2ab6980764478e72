"""Who is calling: the principals, and people's bearer tokens.

``current_user`` (here) and ``agent_auth.current_agent`` are the only places a request's
identity is decided. Both use their own short transaction, so nothing holds a database
lock while a long-poll waits. Passwords are in ``passwords``, one-time codes in ``totp``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import bindparam, select

from .context import Broker
from .db.models import ApiToken, User
from .errors import ApiError
from .ids import digest


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
