"""Page rendering: one Jinja2 environment, and the context every page gets (viewer, CSRF)."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from broker.auth import Principal
from broker.clock import rfc3339

from . import wording
from .security import CookiePolicy, csrf_token

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
TEMPLATES.env.globals.update(
    grant_words=wording.grant_words,
    spec_words=wording.spec_words,
    duration_words=wording.duration_words,
    state_words=wording.state_words,
    state_labels=wording.STATE_LABELS,
    byte_words=wording.byte_words,
)
TEMPLATES.env.filters["iso"] = rfc3339


def cookie_policy(request: Request) -> CookiePolicy:
    policy: CookiePolicy = request.app.state.web_cookies
    return policy


def viewer_of(request: Request) -> Principal | None:
    viewer: Principal | None = getattr(request.state, "viewer", None)
    return viewer


def page(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    """Render ``template``; forms on it carry the CSRF token of the viewer's secret."""
    cookies = cookie_policy(request)
    secret = cookies.csrf_secret(request)
    fresh = None if secret else secrets.token_urlsafe(32)
    values = {
        "viewer": viewer_of(request),
        "csrf": csrf_token(secret or fresh or ""),
        "path": request.url.path,
        **(context or {}),
    }
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status)
    if fresh:
        cookies.set_presession(response, fresh)
    return response


def seconds_left(expires_at: datetime | None, now: datetime) -> int:
    return 0 if expires_at is None else max(0, int((expires_at - now).total_seconds()))
