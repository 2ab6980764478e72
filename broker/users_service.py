"""People: sign-in, passwords, TOTP, users and their bearer tokens.

Each function runs in the caller's ``UnitOfWork``, decides who may do it, and writes the
audit event with the change.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyotp
from sqlalchemy import select

from .access import require_role
from .auth import Principal, accept_totp, check_password, hash_password, totp_uri
from .clock import rfc3339
from .context import UnitOfWork
from .db.models import ApiToken, User
from .errors import ApiError, denied
from .ids import digest, new_id, new_secret
from .views import user_view


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


def _me(uow: UnitOfWork, principal: Principal) -> User:
    user = uow.db.get(User, principal.id)
    assert user is not None
    return user


def login(uow: UnitOfWork, email: str, password: str, totp: str | None) -> dict[str, Any]:
    """A login token for a right password (and TOTP code, where enabled); one answer for
    every wrong part, so nobody learns which emails exist."""
    user = uow.db.scalars(select(User).where(User.email == email.lower())).first()
    password_ok = check_password(password, user.password_hash if user else None)
    if user is None or not password_ok:
        if user is not None:
            raise denied(401, "wrong email, password or code", "anonymous", "auth.login", user.id)
        raise ApiError(401, "wrong email, password or code")
    if user.totp_enabled and not accept_totp(user, totp, uow.now):
        raise denied(401, "wrong email, password or code", "anonymous", "auth.login", user.id)
    uow.audit(f"user:{user.id}", "auth.login", user.id, {})
    return issue_token(uow, user.id, "login", uow.broker.settings.login_token_ttl_s)


def set_password(uow: UnitOfWork, principal: Principal, password: str) -> None:
    user = _me(uow, principal)
    user.password_hash = hash_password(password)
    uow.audit(principal.actor, "user.password_set", user.id, {})


def start_totp(uow: UnitOfWork, principal: Principal) -> dict[str, str]:
    """A new secret for the authenticator app; TOTP is on only once a code confirms it."""
    user = _me(uow, principal)
    if user.totp_enabled:
        raise ApiError(409, "TOTP is already enabled")
    user.totp_secret = pyotp.random_base32()
    return {"secret": user.totp_secret, "uri": totp_uri(user.totp_secret, user.email)}


def confirm_totp(uow: UnitOfWork, principal: Principal, code: str) -> None:
    user = _me(uow, principal)
    if user.totp_enabled or not user.totp_secret:
        raise ApiError(409, "start TOTP setup first (POST /v1/me/totp)")
    if not accept_totp(user, code, uow.now):
        raise ApiError(422, "the TOTP code is wrong or already used")
    user.totp_enabled = True
    uow.audit(principal.actor, "user.totp_enabled", user.id, {})


def new_user(
    uow: UnitOfWork, principal: Principal, email: str, role: str, password: str | None
) -> dict[str, Any]:
    """An admin adds a person; their first API token is in the answer, and only there."""
    require_role(principal, ["admin"], "user.create")
    user = create_user(uow, principal.actor, email, role, password)
    token = issue_token(uow, user.id, "first", uow.broker.settings.api_token_ttl_s)
    return {**user_view(user), "token": token["token"], "token_id": token["id"]}


def new_token(
    uow: UnitOfWork, principal: Principal, user_id: str, name: str, ttl_s: int | None
) -> dict[str, Any]:
    """A person's own token, or anyone's for an admin; others' users are 404."""
    user = uow.db.get(User, user_id)
    if user is None:
        raise ApiError(404, "user not found")
    if principal.role != "admin" and user.id != principal.id:
        raise denied(404, "user not found", principal.actor, "token.create", user.id)
    token = issue_token(uow, user.id, name, ttl_s or uow.broker.settings.api_token_ttl_s)
    uow.audit(principal.actor, "token.created", token["id"], {"user_id": user.id})
    return token


def revoke_token(uow: UnitOfWork, principal: Principal, token_id: str) -> None:
    """A person's own token, or anyone's for an admin; revoking twice changes nothing."""
    token = uow.db.get(ApiToken, token_id)
    if token is None:
        raise ApiError(404, "token not found")
    if principal.role != "admin" and token.user_id != principal.id:
        raise denied(404, "token not found", principal.actor, "token.revoke", token.id)
    if token.revoked_at is None:
        token.revoked_at = uow.now
        uow.audit(principal.actor, "token.revoked", token.id, {"user_id": token.user_id})
