"""Sign in (password + TOTP through the API's own login), sign out, the start page, and the
account page where a person sets up their authenticator app."""

from __future__ import annotations

import io
from typing import Annotated

import segno
from fastapi import APIRouter, Form, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from broker import users_service
from broker.auth import broker_of
from broker.errors import ApiError
from broker.reads import people
from broker.schemas import TotpCode
from broker.sign_in import sign_in

from .deps import SignInRequired, Viewer, current_viewer
from .render import cookie_policy, page

router = APIRouter()

START_PAGES = {"homeowner": "/web/requests", "technician": "/web/tech", "admin": "/web/admin"}


def _safe_next(target: str) -> str:
    """Only our own pages: no open redirect to another site."""
    if target.startswith("/web/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/web/"


@router.get("/")
def start(viewer: Viewer) -> RedirectResponse:
    return RedirectResponse(START_PAGES.get(viewer.role, "/web/login"), status_code=303)


@router.get("/login")
def login_form(request: Request, next: str = "/web/") -> Response:
    try:
        current_viewer(request)
    except SignInRequired:
        return page(
            request, "login.html", {"title": "Sign in", "next": _safe_next(next), "email": ""}
        )
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/login")
async def sign_in_page(
    request: Request,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    totp: Annotated[str, Form(max_length=10)] = "",
    next: Annotated[str, Form(max_length=512)] = "/web/",
) -> Response:
    code = totp.strip() or None
    broker = broker_of(request)
    try:
        issued = await sign_in(request, email, password, code)
    except ApiError as exc:
        if exc.status != 401:
            raise
        if exc.denial is not None:
            await run_in_threadpool(broker.record_denial, exc.denial)
        context = {
            "title": "Sign in",
            "next": _safe_next(next),
            "email": email,
            "message": "Wrong email, password or code. Please try again.",
        }
        return page(request, "login.html", context, status=401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    ttl = broker.settings.login_token_ttl_s
    cookie_policy(request).set_session(response, issued["token"], ttl)
    return response


@router.post("/logout")
def sign_out(request: Request, viewer: Viewer) -> Response:
    """Revoke the token behind the cookie, so a copied cookie is worthless too."""
    token = cookie_policy(request).session_token(request) or ""
    broker = broker_of(request)
    with broker.unit_of_work() as uow:
        token_id = people.token_id_of(uow.db, token)
        if token_id is not None:
            users_service.revoke_token(uow, viewer, token_id)
    response = RedirectResponse("/web/login", status_code=303)
    cookie_policy(request).clear_session(response)
    return response


@router.get("/account")
def account(request: Request, viewer: Viewer) -> Response:
    with broker_of(request).read() as db:
        me = people.me(db, viewer)
    return page(request, "account.html", {"title": "Your account", "me": me})


def _setup_page(request: Request, secret: str, uri: str, message: str = "") -> Response:
    svg = io.BytesIO()
    segno.make(uri).save(svg, kind="svg", scale=5, xmldecl=False, title="Authenticator")
    context = {
        "title": "Set up your authenticator",
        "secret": secret,
        "qr_svg": svg.getvalue().decode(),
        "message": message,
    }
    return page(request, "account_totp.html", context, status=422 if message else 200)


@router.post("/account/totp")
def start_authenticator(request: Request, viewer: Viewer) -> Response:
    """A new TOTP secret as a QR code for the authenticator app; it is on only after a code."""
    with broker_of(request).unit_of_work() as uow:
        started = users_service.start_totp(uow, viewer)
    return _setup_page(request, started["secret"], started["uri"])


@router.post("/account/totp/confirm")
def confirm_authenticator(
    request: Request, viewer: Viewer, code: Annotated[str, Form(min_length=6, max_length=10)]
) -> Response:
    broker = broker_of(request)
    try:
        with broker.unit_of_work() as uow:
            users_service.confirm_totp(uow, viewer, TotpCode(code=code.strip()).code)
    except ApiError as exc:
        if exc.status != 422:
            raise
        with broker.read() as db:
            setup = people.totp_setup(db, viewer)
        if setup is None:
            raise
        secret, uri = setup
        return _setup_page(
            request, secret, uri, "That code is wrong or already used. Try the next one."
        )
    return RedirectResponse("/web/account", status_code=303)
