"""The operator's overview: homes and their agents, people and their tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from broker.routes import homes as homes_api
from broker.routes import identity as api
from broker.schemas import NewUser, Role

from .deps import Admin
from .queries import when
from .render import page

router = APIRouter()


def _overview(request: Request, viewer: Admin, created: dict[str, str] | None = None) -> Response:
    homes = homes_api.list_homes(request, viewer)["homes"]
    users = api.list_users(request, viewer)["users"]
    emails = {u["id"]: u["email"] for u in users}
    context = {
        "title": "Admin",
        "homes": homes,
        "users": users,
        "emails": emails,
        "tokens": api.list_tokens(request, viewer)["tokens"],
        "created": created,
        "now": request.app.state.broker.clock(),
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
    created = api.new_user(
        request, viewer, NewUser(email=email, role=role, password=password or None)
    )
    return _overview(request, viewer, created)


@router.post("/admin/tokens/{token_id}/revoke")
def revoke_token(request: Request, viewer: Admin, token_id: str) -> Response:
    api.revoke_token(request, viewer, token_id)
    return RedirectResponse("/web/admin", status_code=303)
