"""The operator's overview: homes and their agents, people and their tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker import users_service
from broker.auth import broker_of
from broker.reads import homes, people
from broker.schemas import NewUser, Role

from .deps import Admin
from .queries import when
from .render import page

router = APIRouter()


def _overview(request: Request, viewer: Admin, created: dict[str, str] | None = None) -> Response:
    broker = broker_of(request)
    with broker.read() as db:
        users = people.list_users(db, viewer)["users"]
        listed = homes.list_homes(db, viewer)["homes"]
        tokens = people.list_tokens(db, viewer)["tokens"]
    context = {
        "title": "Admin",
        "homes": listed,
        "users": users,
        "emails": {u["id"]: u["email"] for u in users},
        "tokens": tokens,
        "created": created,
        "now": broker.clock(),
        "when_dt": when,
    }
    return page(request, "admin.html", context)


@router.get("/admin")
def overview(request: Request, viewer: Admin) -> Response:
    return _overview(request, viewer)


@router.post("/admin/users")
def create_user(
    request: Request,
    viewer: Admin,
    email: Annotated[str, Form(max_length=254)],
    role: Annotated[Role, Form()],
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """The new user's first API token is shown on this one page and never again."""
    body = NewUser(email=email, role=role, password=password or None)
    created = broker_of(request).run(
        lambda uow: users_service.new_user(uow, viewer, body.email, body.role, body.password)
    )
    return _overview(request, viewer, created)


@router.post("/admin/tokens/{token_id}/revoke")
def revoke_token(request: Request, viewer: Admin, token_id: str) -> Response:
    with broker_of(request).unit_of_work() as uow:
        users_service.revoke_token(uow, viewer, token_id)
    return RedirectResponse("/web/admin", status_code=303)
