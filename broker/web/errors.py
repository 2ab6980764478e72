"""Every failure on a web page becomes a readable page: never JSON, never a stack trace.

These handlers belong to the web sub-application only, so the API keeps its JSON errors.
Refusals the API would audit (``ApiError`` with a denial) are audited here the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from broker.auth import broker_of
from broker.errors import ApiError
from netpolicy import PolicyError

from .deps import CsrfRejected, SignInRequired
from .render import cookie_policy, page

log = logging.getLogger("ztb.web")

_TITLES = {
    400: "That request was not understood",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "That cannot be done now",
    413: "Too much data",
    422: "Please check what you entered",
    429: "Too many attempts",
}


def error_page(request: Request, status: int, message: str) -> Response:
    title = _TITLES.get(status, "Something went wrong")
    context = {"title": title, "status": status, "message": message}
    return page(request, "error.html", context, status=status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.denial is not None:
        broker_of(request).record_denial(exc.denial)
    if exc.status == 401:
        return await _sign_in(request, exc)
    return error_page(request, exc.status, exc.detail)


async def _policy_error(request: Request, exc: Exception) -> Response:
    return error_page(request, 422, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: "There is no such page, or it is not yours to see.",
        405: "This address does not take that kind of request.",
    }
    return error_page(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))


def _first_problem(errors: list[Any]) -> str:
    first = errors[0] if errors else {}
    field = str((first.get("loc") or ("a field",))[-1]).replace("_", " ")
    return f"The field “{field}” is missing or not valid: {first.get('msg', 'invalid')}."


async def _invalid_form(request: Request, exc: Exception) -> Response:
    """A form field FastAPI refused, or a form that does not make a valid API body."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    return error_page(request, 422, _first_problem(list(exc.errors())))


async def _csrf(request: Request, exc: Exception) -> Response:
    return error_page(
        request,
        403,
        "This form was not sent from this page, or it is out of date. "
        "Go back, reload the page and try again.",
    )


async def _sign_in(request: Request, exc: Exception) -> Response:
    response = RedirectResponse(f"/web/login?next={quote(request.url.path)}", status_code=303)
    cookie_policy(request).clear_session(response)
    return response


async def _last_resort(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Anything unforeseen: log it for the operator, show the person a calm page."""
    try:
        return await call_next(request)
    except Exception:
        log.exception("web page failed: %s %s", request.method, request.url.path)
        return error_page(
            request, 500, "Something went wrong on our side. Please try again in a moment."
        )


def install_error_pages(web: FastAPI) -> None:
    web.add_exception_handler(ApiError, _api_error)
    web.add_exception_handler(PolicyError, _policy_error)
    web.add_exception_handler(HTTPException, _http_error)
    web.add_exception_handler(RequestValidationError, _invalid_form)
    web.add_exception_handler(ValidationError, _invalid_form)
    web.add_exception_handler(CsrfRejected, _csrf)
    web.add_exception_handler(SignInRequired, _sign_in)
    web.middleware("http")(_last_resort)
