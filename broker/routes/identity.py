"""People: login, password, TOTP, users and API tokens."""

from __future__ import annotations

from typing import Annotated, Any

import pyotp
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select

from ..access import require_role
from ..auth import Principal, accept_totp, broker_of, check_password, current_user, hash_password
from ..context import UnitOfWork
from ..db.models import ApiToken, User
from ..errors import ApiError, denied
from ..schemas import Login, NewPassword, NewToken, NewUser, TotpCode
from ..users_service import create_user, issue_token
from ..views import token_view, user_view

router = APIRouter(prefix="/v1", tags=["identity"])
Me = Annotated[Principal, Depends(current_user)]


@router.get("/me")
def me(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        user = uow.db.get(User, principal.id)
        assert user is not None
        return user_view(user)


@router.post("/auth/login")
def login(request: Request, body: Login) -> dict[str, Any]:
    broker = broker_of(request)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        user = uow.db.scalars(select(User).where(User.email == body.email.lower())).first()
        password_ok = check_password(body.password, user.password_hash if user else None)
        if user is None or not password_ok:
            if user is not None:
                raise denied(
                    401, "wrong email, password or code", "anonymous", "auth.login", user.id
                )
            raise ApiError(401, "wrong email, password or code")
        if user.totp_enabled and not accept_totp(user, body.totp, uow.now):
            raise denied(401, "wrong email, password or code", "anonymous", "auth.login", user.id)
        uow.audit(f"user:{user.id}", "auth.login", user.id, {})
        return issue_token(uow, user.id, "login", broker.settings.login_token_ttl_s)

    return broker.run(work)


@router.post("/me/password", status_code=204)
def set_password(request: Request, principal: Me, body: NewPassword) -> Response:
    with broker_of(request).unit_of_work() as uow:
        user = uow.db.get(User, principal.id)
        assert user is not None
        user.password_hash = hash_password(body.password)
        uow.audit(principal.actor, "user.password_set", user.id, {})
    return Response(status_code=204)


@router.post("/me/totp")
def start_totp(request: Request, principal: Me) -> dict[str, str]:
    with broker_of(request).unit_of_work() as uow:
        user = uow.db.get(User, principal.id)
        assert user is not None
        if user.totp_enabled:
            raise ApiError(409, "TOTP is already enabled")
        user.totp_secret = pyotp.random_base32()
        uri = pyotp.TOTP(user.totp_secret).provisioning_uri(name=user.email, issuer_name="ztb")
        return {"secret": user.totp_secret, "uri": uri}


@router.post("/me/totp/confirm", status_code=204)
def confirm_totp(request: Request, principal: Me, body: TotpCode) -> Response:
    with broker_of(request).unit_of_work() as uow:
        user = uow.db.get(User, principal.id)
        assert user is not None
        if user.totp_enabled or not user.totp_secret:
            raise ApiError(409, "start TOTP setup first (POST /v1/me/totp)")
        if not accept_totp(user, body.code, uow.now):
            raise ApiError(422, "the TOTP code is wrong or already used")
        user.totp_enabled = True
        uow.audit(principal.actor, "user.totp_enabled", user.id, {})
    return Response(status_code=204)


@router.post("/users", status_code=201)
def new_user(request: Request, principal: Me, body: NewUser) -> dict[str, Any]:
    require_role(principal, ["admin"], "user.create")
    broker = broker_of(request)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        user = create_user(uow, principal.actor, body.email, body.role, body.password)
        token = issue_token(uow, user.id, "first", broker.settings.api_token_ttl_s)
        return {**user_view(user), "token": token["token"], "token_id": token["id"]}

    return broker.run(work)


@router.get("/users")
def list_users(request: Request, principal: Me) -> dict[str, Any]:
    require_role(principal, ["admin"], "user.list")
    with broker_of(request).unit_of_work() as uow:
        return {"users": [user_view(u) for u in uow.db.scalars(select(User).order_by(User.email))]}


@router.post("/users/{user_id}/tokens", status_code=201)
def new_token(request: Request, principal: Me, user_id: str, body: NewToken) -> dict[str, Any]:
    broker = broker_of(request)
    with broker.unit_of_work() as uow:
        user = uow.db.get(User, user_id)
        if user is None:
            raise ApiError(404, "user not found")
        if principal.role != "admin" and user.id != principal.id:
            raise denied(404, "user not found", principal.actor, "token.create", user.id)
        ttl = body.ttl_s or broker.settings.api_token_ttl_s
        token = issue_token(uow, user.id, body.name, ttl)
        uow.audit(principal.actor, "token.created", token["id"], {"user_id": user.id})
        return token


@router.get("/tokens")
def list_tokens(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).unit_of_work() as uow:
        query = select(ApiToken).order_by(ApiToken.created_at)
        if principal.role != "admin":
            query = query.where(ApiToken.user_id == principal.id)
        return {"tokens": [token_view(t) for t in uow.db.scalars(query)]}


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(request: Request, principal: Me, token_id: str) -> Response:
    with broker_of(request).unit_of_work() as uow:
        token = uow.db.get(ApiToken, token_id)
        if token is None:
            raise ApiError(404, "token not found")
        if principal.role != "admin" and token.user_id != principal.id:
            raise denied(404, "token not found", principal.actor, "token.revoke", token.id)
        if token.revoked_at is None:
            token.revoked_at = uow.now
            uow.audit(principal.actor, "token.revoked", token.id, {"user_id": token.user_id})
    return Response(status_code=204)
