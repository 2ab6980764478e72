"""What every web route depends on: the broker, the signed-in viewer, the CSRF check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from broker.access import require_role
from broker.auth import Principal, broker_of, principal_for_token

from .render import cookie_policy
from .security import csrf_ok


class SignInRequired(Exception):
    """No valid sign-in cookie: the handler sends the browser to the sign-in page."""


class CsrfRejected(Exception):
    """A POST without this session's form token: maybe forged by another site."""


async def check_csrf(request: Request) -> None:
    """Every state change is a POST, and every POST must carry the form token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    form = await request.form()
    if not csrf_ok(cookie_policy(request).csrf_secret(request), form.get("csrf_token")):
        raise CsrfRejected


def current_viewer(request: Request) -> Principal:
    token = cookie_policy(request).session_token(request)
    if token is None:
        raise SignInRequired
    viewer = principal_for_token(broker_of(request), token)
    if viewer is None:
        raise SignInRequired
    request.state.viewer = viewer
    return viewer


Viewer = Annotated[Principal, Depends(current_viewer)]


def _role(*roles: str) -> Any:
    def check(viewer: Viewer, request: Request) -> Principal:
        require_role(viewer, roles, f"web:{request.url.path}")
        return viewer

    return Depends(check)


Homeowner = Annotated[Principal, _role("homeowner", "admin")]
Technician = Annotated[Principal, _role("technician")]
Admin = Annotated[Principal, _role("admin")]
