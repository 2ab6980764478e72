"""People and their API tokens, as a caller may see them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..access import require_role
from ..auth import Principal
from ..db.models import ApiToken, User
from ..ids import digest
from ..totp import totp_uri
from ..views import token_view, user_view
from .names import names_for


def me(db: Session, principal: Principal) -> dict[str, Any]:
    user = db.get(User, principal.id)
    assert user is not None
    return user_view(user)


def list_users(db: Session, principal: Principal) -> dict[str, Any]:
    require_role(principal, ["admin"], "user.list")
    return {"users": [user_view(u) for u in db.scalars(select(User).order_by(User.email))]}


def list_tokens(db: Session, principal: Principal) -> dict[str, Any]:
    """An admin sees every token, anyone else their own."""
    query = select(ApiToken).order_by(ApiToken.created_at)
    if principal.role != "admin":
        query = query.where(ApiToken.user_id == principal.id)
    tokens = [token_view(t) for t in db.scalars(query)]
    emails = names_for(db, user_ids=(t["user_id"] for t in tokens)).emails
    return {"tokens": [{**t, "user_email": emails.get(t["user_id"])} for t in tokens]}


def token_id_of(db: Session, secret: str) -> str | None:
    """The id of the token whose secret this is (the web's sign-in cookie holds one)."""
    return db.scalars(select(ApiToken.id).where(ApiToken.token_hash == digest(secret))).first()


def roles_and_emails(db: Session, user_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{id: (role, email)}`` of these users, in one query."""
    rows = db.execute(select(User.id, User.role, User.email).where(User.id.in_(set(user_ids))))
    return {row.id: (row.role, row.email) for row in rows}


def totp_setup(db: Session, principal: Principal) -> tuple[str, str] | None:
    """The secret (and its authenticator URI) of a TOTP setup started but not confirmed."""
    user = db.get(User, principal.id)
    if user is None or user.totp_enabled or not user.totp_secret:
        return None
    return user.totp_secret, totp_uri(user.totp_secret, user.email)
