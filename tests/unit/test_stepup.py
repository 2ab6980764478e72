"""Step-up (TOTP, or the password where there is none) guards what weakens a home.

Issue 10 item 7: a non-ASCII TOTP code answered 500 at ``/v1/me/totp/confirm``,
``/v1/auth/login`` and approve; on login it was 500 for the right password and 401 for a
wrong one (a password oracle). Codes are exactly six ASCII digits.
"""

from __future__ import annotations

import pyotp
import pytest

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"
# Full-width and Arabic-Indic digits (str.isdigit() says yes), a letter, accents.
NOT_ASCII_CODES = [
    "\uff11\uff12\uff13\uff14\uff15\uff16",
    "\u0661\u0662\u0663\u0664\u0665\u0666",
    "12345\u00e9",
    "12345a",
]


async def with_totp(h: Harness, token: str) -> pyotp.TOTP:
    """Turn TOTP on for the token's user; the clock moves past the code used to confirm."""
    totp = pyotp.TOTP((await h.ok("POST", "/v1/me/totp", token))["secret"])
    await h.ok("POST", "/v1/me/totp/confirm", token, json={"code": totp.at(h.clock.now)})
    h.clock.advance(30)
    return totp


@pytest.mark.parametrize("code", NOT_ASCII_CODES)
async def test_confirm_refuses_a_code_that_is_not_six_ascii_digits(
    harness: Harness, code: str
) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/totp", w.owner_a)
    answer = await h.call("POST", "/v1/me/totp/confirm", w.owner_a, json={"code": code})
    assert answer.status_code == 422, answer.text
    assert "code" in answer.json()["detail"]


@pytest.mark.parametrize("code", NOT_ASCII_CODES)
async def test_login_with_a_non_ascii_code_is_no_password_oracle(
    harness: Harness, code: str
) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})
    await with_totp(h, w.owner_a)
    answers = [
        await h.call(
            "POST",
            "/v1/auth/login",
            json={"email": "ann@example.com", "password": password, "totp": code},
        )
        for password in (PASSWORD, "wrong password")
    ]
    assert [a.status_code for a in answers] == [422, 422], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()


@pytest.mark.parametrize("code", NOT_ASCII_CODES)
async def test_step_up_approval_refuses_a_non_ascii_code(harness: Harness, code: str) -> None:
    h = harness
    w = await h.world()
    await with_totp(h, w.owner_a)
    patch = {"require_totp_for_approval": True}  # turning protection on needs no step-up
    await h.ok("PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json=patch)
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    answer = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={"totp": code})
    assert answer.status_code == 422, answer.text
