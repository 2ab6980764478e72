"""The web sign-in cookie and CSRF tokens.

The cookie holds an ordinary API token (hashed at rest, expiring, revocable like any other),
so the pages authorize exactly as the API does. The CSRF token of a form is an HMAC of that
secret: per session, nothing extra stored, and unguessable without the HttpOnly cookie.
Before sign-in a random pre-session cookie plays the secret's part, so the sign-in form is
protected too.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request, Response

_CSRF_PURPOSE = b"ztb web form v1"


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """``secure=False`` only for plain-HTTP development and tests: browsers refuse to send
    Secure cookies over http://, and the ``__Host-`` prefix demands Secure."""

    secure: bool = True

    @property
    def session_name(self) -> str:
        return "__Host-ztb" if self.secure else "ztb"

    @property
    def presession_name(self) -> str:
        return "__Host-ztb-pre" if self.secure else "ztb-pre"

    def set_session(self, response: Response, token: str, max_age_s: int) -> None:
        response.set_cookie(
            self.session_name,
            token,
            max_age=max_age_s,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )
        response.delete_cookie(self.presession_name, path="/")

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(
            self.session_name, path="/", secure=self.secure, httponly=True, samesite="lax"
        )

    def set_presession(self, response: Response, value: str) -> None:
        """The secret behind the sign-in form's CSRF token, before there is a session."""
        response.set_cookie(
            self.presession_name,
            value,
            max_age=3600,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def session_token(self, request: Request) -> str | None:
        return request.cookies.get(self.session_name) or None

    def csrf_secret(self, request: Request) -> str | None:
        return self.session_token(request) or request.cookies.get(self.presession_name) or None


def csrf_token(secret: str) -> str:
    return hmac.new(secret.encode(), _CSRF_PURPOSE, hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, submitted: object) -> bool:
    if not secret or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret), submitted)
