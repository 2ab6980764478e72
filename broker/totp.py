"""Time-based one-time codes (RFC 6238) for sign-in and for approvals a home guards."""

from __future__ import annotations

import hmac
import re
from datetime import datetime

import pyotp

from .db.models import User

TOTP_STEP_S = 30
_TOTP_CODE = re.compile(r"[0-9]{6}")


def accept_totp(user: User, code: str | None, now: datetime) -> bool:
    """A current code (±1 step for clock drift), each step usable once: no replays."""
    if not user.totp_secret or not code or not _TOTP_CODE.fullmatch(code):
        return False  # never hand a non-ASCII string to compare_digest (TypeError: a 500)
    totp = pyotp.TOTP(user.totp_secret)
    current = int(now.timestamp()) // TOTP_STEP_S
    for step in (current - 1, current, current + 1):
        if step > user.totp_last_step and hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
            user.totp_last_step = step
            return True
    return False


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    """What an authenticator app scans to add this account."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name="ztb")
