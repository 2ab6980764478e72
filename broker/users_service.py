"""Users and their bearer tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from .auth import hash_password
from .clock import rfc3339
from .context import UnitOfWork
from .db.models import ApiToken, User
from .errors import ApiError
from .ids import digest, new_id, new_secret


def issue_token(uow: UnitOfWork, user_id: str, name: str, ttl_s: int) -> dict[str, Any]:
    """A new bearer token; only its digest is stored, the caller sees it once."""
    token = new_secret("ztb")
    row = ApiToken(
        id=new_id("tok"),
        user_id=user_id,
        name=name,
        token_hash=digest(token),
        created_at=uow.now,
        expires_at=uow.now + timedelta(seconds=ttl_s),
    )
    uow.db.add(row)
    uow.db.flush()
    return {"id": row.id, "token": token, "expires_at": rfc3339(row.expires_at)}


def create_user(uow: UnitOfWork, actor: str, email: str, role: str, password: str | None) -> User:
    email = email.lower()
    if uow.db.scalars(select(User.id).where(User.email == email)).first():
        raise ApiError(409, f"a user with email {email} already exists")
    user = User(
        id=new_id("usr"),
        email=email,
        role=role,
        password_hash=hash_password(password) if password else None,
        totp_enabled=False,
        totp_last_step=0,
        created_at=uow.now,
    )
    uow.db.add(user)
    uow.db.flush()
    uow.audit(actor, "user.created", user.id, {"email": email, "role": role})
    return user
