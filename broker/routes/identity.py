"""People: login, password, TOTP, users and API tokens (HTTP adapters of
``users_service`` and ``reads.people``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from .. import users_service as service
from ..auth import broker_of
from ..reads import people
from ..schemas import Login, NewPassword, NewToken, NewUser, TotpCode
from ..sign_in import sign_in
from .deps import Me, StepUp

router = APIRouter(prefix="/v1", tags=["identity"])


@router.get("/me")
def me(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return people.me(db, principal)


@router.post("/auth/login")
async def login(request: Request, body: Login) -> dict[str, Any]:
    return await sign_in(request, body.email, body.password, body.totp)


@router.post("/me/password", status_code=204)
def set_password(request: Request, principal: Me, body: NewPassword, proof: StepUp) -> Response:
    """Needs the current password (or a TOTP code) in the step-up header."""
    with broker_of(request).unit_of_work() as uow:
        service.set_password(uow, principal, body.password, proof)
    return Response(status_code=204)


@router.post("/me/sign-out-everywhere")
def sign_out_everywhere(request: Request, principal: Me) -> dict[str, int]:
    """Revoke every token of mine (this one too) and all they minted."""
    with broker_of(request).unit_of_work() as uow:
        return service.sign_out_everywhere(uow, principal)


@router.post("/me/totp")
def start_totp(request: Request, principal: Me) -> dict[str, str]:
    with broker_of(request).unit_of_work() as uow:
        return service.start_totp(uow, principal)


@router.post("/me/totp/confirm", status_code=204)
def confirm_totp(request: Request, principal: Me, body: TotpCode) -> Response:
    with broker_of(request).unit_of_work() as uow:
        service.confirm_totp(uow, principal, body.code)
    return Response(status_code=204)


@router.post("/users", status_code=201)
def new_user(request: Request, principal: Me, body: NewUser) -> dict[str, Any]:
    return broker_of(request).run(
        lambda uow: service.new_user(uow, principal, body.email, body.role, body.password)
    )


@router.get("/users")
def list_users(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return people.list_users(db, principal)


@router.post("/users/{user_id}/tokens", status_code=201)
def new_token(
    request: Request, principal: Me, user_id: str, body: NewToken, proof: StepUp
) -> dict[str, Any]:
    """Without step-up the token is a child of the calling one (dies with it)."""
    with broker_of(request).unit_of_work() as uow:
        return service.new_token(uow, principal, user_id, body.name, body.ttl_s, proof)


@router.get("/tokens")
def list_tokens(request: Request, principal: Me) -> dict[str, Any]:
    with broker_of(request).read() as db:
        return people.list_tokens(db, principal)


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(request: Request, principal: Me, token_id: str) -> Response:
    with broker_of(request).unit_of_work() as uow:
        service.revoke_token(uow, principal, token_id)
    return Response(status_code=204)
