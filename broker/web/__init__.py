"""Web pages for homeowners, technicians and admins, served by the broker itself.

Server-rendered (Jinja2), a few lines of plain JavaScript for local times, countdowns and
live refresh, no build step and nothing from a CDN. The pages are a sub-application mounted
at ``/web`` with their own error pages, so the JSON API's errors stay JSON.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from .deps import check_csrf
from .errors import install_error_pages
from .pages_admin import router as admin_router
from .pages_homeowner import router as homeowner_router
from .pages_session import router as session_router
from .pages_signin import router as signin_router
from .pages_technician import router as technician_router
from .security import CookiePolicy

__all__ = ["PREFIX", "install_web"]

PREFIX = "/web"
STATIC = Path(__file__).resolve().parent / "static"
INSECURE_COOKIES_ENV = "ZTB_WEB_INSECURE_COOKIES"

_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers.update(_HEADERS)
    if not request.url.path.startswith(f"{PREFIX}/static/"):
        response.headers["cache-control"] = "no-store"
    return response


def install_web(app: FastAPI, *, secure_cookies: bool | None = None) -> None:
    """Mount the pages on ``app`` at ``/web`` and send ``/`` there.

    Cookies are ``Secure`` unless ``secure_cookies=False`` or the environment sets
    ``ZTB_WEB_INSECURE_COOKIES=1`` (plain-HTTP development and the browser tests only).
    """
    if secure_cookies is None:
        secure_cookies = os.environ.get(INSECURE_COOKIES_ENV) != "1"
    web = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(check_csrf)],
    )
    web.state = app.state  # one state: the broker that the app factory puts there
    app.state.web_cookies = CookiePolicy(secure=secure_cookies)
    for router in (
        signin_router,
        homeowner_router,
        technician_router,
        session_router,
        admin_router,
    ):
        web.include_router(router)
    web.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_error_pages(web)
    web.middleware("http")(_security_headers)
    app.mount(PREFIX, web, name="web")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=303)
