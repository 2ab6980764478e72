"""People: sign-in, passwords, TOTP, users and their bearer tokens.

Each function runs in the caller's ``UnitOfWork``, decides who may do it, and writes the
audit event with the change.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select

from . import stepup
from .access import require_role
from .auth import Principal
from .clock import rfc3339
from .context import Broker, UnitOfWork
from .db.models import ApiToken, User
from .errors import ApiError, denied
from .ids import digest, new_id, new_secret
from .passwords import check_password, hash_password
from .totp import accept_totp, new_totp_secret, totp_uri
from .views import user_view


def issue_token(
    uow: UnitOfWork, user_id: str, name: str, ttl_s: int, parent: ApiToken | None = None
) -> dict[str, Any]:
    """A new bearer token; only its digest is stored, the caller sees it once. A token
    minted by another (``parent``) never outlives it and is revoked with it."""
    token = new_secret("ztb")
    expires_at = uow.now + timedelta(seconds=ttl_s)
    if parent is not None and parent.expires_at is not None:
        expires_at = min(expires_at, parent.expires_at)
    row = ApiToken(
        id=new_id("tok"),
        user_id=user_id,
        name=name,
        token_hash=digest(token),
        created_at=uow.now,
        expires_at=expires_at,
        parent_id=parent.id if parent is not None else None,
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


WRONG_SIGN_IN = "wrong email, password or code"


def _me(uow: UnitOfWork, principal: Principal) -> User:
    user = uow.db.get(User, principal.id)
    assert user is not None
    return user


def login(broker: Broker, email: str, password: str, totp: str | None) -> dict[str, Any]:
    """A login token for a right password (and TOTP code, where enabled); one answer for
    every wrong part, so nobody learns which emails exist.

    The password hash runs before any write transaction (it takes tens of milliseconds;
    under a flood of wrong passwords it must not hold the database write lock that every
    other change waits for). A failure is one small audit write (the denial)."""
    with broker.read() as db:
        found = db.execute(
            select(User.id, User.password_hash).where(User.email == email.lower())
        ).first()
    # The same hashing work whether or not the email exists (see ``check_password``).
    if not check_password(password, found.password_hash if found else None):
        if found is not None:
            raise denied(401, WRONG_SIGN_IN, "anonymous", "auth.login", found.id)
        raise ApiError(401, WRONG_SIGN_IN)
    assert found is not None

    def work(uow: UnitOfWork) -> dict[str, Any]:
        user = uow.db.get(User, found.id)
        if user is None or user.password_hash != found.password_hash:  # changed meanwhile
            raise denied(401, WRONG_SIGN_IN, "anonymous", "auth.login", found.id)
        if user.totp_enabled and not accept_totp(user, totp, uow.now):
            raise denied(401, WRONG_SIGN_IN, "anonymous", "auth.login", user.id)
        uow.audit(f"user:{user.id}", "auth.login", user.id, {})
        return issue_token(uow, user.id, "login", broker.settings.login_token_ttl_s)

    return broker.run(work)


def set_password(uow: UnitOfWork, principal: Principal, password: str, proof: stepup.Proof) -> None:
    """A new password needs step-up (the current password, or a TOTP code where TOTP is
    on): a stolen token alone cannot lock the owner out. An account with neither sets its
    first password with its token. The owner's homes are told."""
    user = _me(uow, principal)
    factor = stepup.require(uow, principal, proof, "user.password_set", user.id)
    user.password_hash = hash_password(password)
    uow.audit(principal.actor, "user.password_set", user.id, {"step_up": factor})
    homes = stepup.homes_of(uow, user.id)
    stepup.tell_owner(uow, homes, "user.password_set", principal.actor, {"user_id": user.id})


def start_totp(uow: UnitOfWork, principal: Principal) -> dict[str, str]:
    """A new secret for the authenticator app; TOTP is on only once a code confirms it."""
    user = _me(uow, principal)
    if user.totp_enabled:
        raise ApiError(409, "TOTP is already enabled")
    user.totp_secret = new_totp_secret()
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


def _token(uow: UnitOfWork, token_id: str) -> ApiToken:
    token = uow.db.get(ApiToken, token_id)
    assert token is not None
    return token


def new_token(
    uow: UnitOfWork,
    principal: Principal,
    user_id: str,
    name: str,
    ttl_s: int | None,
    proof: stepup.Proof = stepup.NO_PROOF,
) -> dict[str, Any]:
    """A person's own token, or anyone's for an admin; others' users are 404.

    Without step-up the new token is a child of the calling one: it expires no later and
    is revoked with it, so a stolen token cannot mint a way to outlast its revocation.
    With step-up it stands on its own. Either way its life is capped by the operator."""
    user = uow.db.get(User, user_id)
    if user is None:
        raise ApiError(404, "user not found")
    if principal.role != "admin" and user.id != principal.id:
        raise denied(404, "user not found", principal.actor, "token.create", user.id)
    cap = uow.broker.settings.max_token_ttl_s
    if ttl_s is not None and ttl_s > cap:
        raise ApiError(422, f"ttl_s is over this broker's cap of {cap} s")
    parent = None
    factor = None
    if proof.given:
        factor = stepup.require(uow, principal, proof, "token.create", user.id)
    else:
        parent = _token(uow, principal.token_id)
    ttl = min(ttl_s or uow.broker.settings.api_token_ttl_s, cap)
    token = issue_token(uow, user.id, name, ttl, parent)
    details = {"user_id": user.id, "parent_id": parent.id if parent else None, "step_up": factor}
    uow.audit(principal.actor, "token.created", token["id"], details)
    if parent is None:
        homes = stepup.homes_of(uow, user.id)
        stepup.tell_owner(uow, homes, "token.created", principal.actor, details)
    return token


_CHILDREN = select(ApiToken).where(ApiToken.parent_id.in_(bindparam("ids", expanding=True)))


def _revoke_with_children(uow: UnitOfWork, actor: str, first: list[ApiToken]) -> int:
    """Revoke these tokens and every token they minted, down the tree; audited each."""
    revoked, layer = 0, first
    while layer:
        for token in layer:
            if token.revoked_at is None:
                token.revoked_at = uow.now
                revoked += 1
                uow.audit(actor, "token.revoked", token.id, {"user_id": token.user_id})
        layer = list(uow.db.scalars(_CHILDREN, {"ids": [t.id for t in layer]}))
    return revoked


def revoke_token(uow: UnitOfWork, principal: Principal, token_id: str) -> None:
    """A person's own token, or anyone's for an admin; the tokens it minted go with it.
    Revoking twice changes nothing."""
    token = uow.db.get(ApiToken, token_id)
    if token is None:
        raise ApiError(404, "token not found")
    if principal.role != "admin" and token.user_id != principal.id:
        raise denied(404, "token not found", principal.actor, "token.revoke", token.id)
    _revoke_with_children(uow, principal.actor, [token])


def sign_out_everywhere(uow: UnitOfWork, principal: Principal) -> dict[str, int]:
    """Revoke every token of the caller, this one included (after a suspected theft)."""
    live = list(
        uow.db.scalars(
            select(ApiToken).where(ApiToken.user_id == principal.id, ApiToken.revoked_at.is_(None))
        )
    )
    revoked = _revoke_with_children(uow, principal.actor, live)
    uow.audit(principal.actor, "user.signed_out_everywhere", principal.id, {"tokens": revoked})
    return {"revoked": revoked}
