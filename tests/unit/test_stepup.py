"""Step-up (TOTP, or the password where there is none) guards what weakens a home.

Issue 10 item 1: with a stolen homeowner token alone, ``PATCH require_totp_for_approval
false`` and a ``PUT policy`` auto-approving ``*:tcp/1-65535`` answered 200.

Issue 10 item 7: a non-ASCII TOTP code answered 500 at ``/v1/me/totp/confirm``,
``/v1/auth/login`` and approve; on login it was 500 for the right password and 401 for a
wrong one (a password oracle). Codes are exactly six ASCII digits.
"""

from __future__ import annotations

import json
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent, Home
from broker.webhooks import Delivery

from .broker_harness import Harness, World, anyio_backend, harness

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


# Issue 10 item 1: a stolen homeowner token turned off the TOTP step-up and opened the
# policy to auto-approve everything.


def capture_webhooks(h: Harness, monkeypatch: pytest.MonkeyPatch, home_id: str) -> list[Delivery]:
    """Give the home a webhook (set on the row: its URL rules are the webhook tests') and
    keep what the broker sends there, session events left out."""
    with h.broker.unit_of_work() as uow:
        home = uow.db.get(Home, home_id)
        assert home is not None
        home.webhook_url, home.webhook_secret = "https://hooks.example.com/ann", "s" * 32
    sent: list[Delivery] = []

    def keep(delivery: Delivery) -> None:
        if not delivery.event.startswith("session."):
            sent.append(delivery)

    monkeypatch.setattr(h.broker.webhooks, "send", keep)
    return sent


async def owner_with_password(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> tuple[World, list[Delivery]]:
    """Home A's owner with a password (no TOTP), and what her home's webhook is sent."""
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})
    return w, capture_webhooks(h, monkeypatch, w.home_a)


def audited(h: Harness, action: str) -> list[dict[str, Any]]:
    with h.broker.read() as db:
        rows = db.scalars(select(AuditEvent).where(AuditEvent.action == action))
        return [json.loads(row.details) for row in rows]


async def test_stolen_token_cannot_turn_off_totp_for_approvals(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    w = await h.world()
    totp = await with_totp(h, w.owner_a)
    home = f"/v1/homes/{w.home_a}"
    await h.ok("PATCH", home, w.owner_a, json={"require_totp_for_approval": True})
    sent = capture_webhooks(h, monkeypatch, w.home_a)

    # The thief has the token only.
    off = {"require_totp_for_approval": False}
    answer = await h.call("PATCH", home, w.owner_a, json=off)
    assert answer.status_code == 403, answer.text
    assert "X-Ztb-Step-Up" in answer.json()["detail"]
    assert (await h.ok("GET", home, w.owner_a))["require_totp_for_approval"] is True
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    bare = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={})
    assert bare.status_code == 403
    wrong = await h.call("PATCH", home, w.owner_a, json=off, headers={"X-Ztb-Step-Up": "000000"})
    assert wrong.status_code == 403
    assert [d["attempt"] for d in audited(h, "denied")].count("home.weaken") == 2
    assert sent == []

    # The owner, with a current code, may.
    code = {"X-Ztb-Step-Up": totp.at(h.clock.now)}
    assert (await h.ok("PATCH", home, w.owner_a, json=off, headers=code))[
        "require_totp_for_approval"
    ] is False
    assert audited(h, "home.protection_lowered") == [
        {"changes": ["TOTP for approvals off"], "step_up": "totp"}
    ]
    assert [d.event for d in sent] == ["home.protection_lowered"]
    assert sent[0].url == "https://hooks.example.com/ann"


AUTO_APPROVE_EVERYTHING = {
    "auto_approve": [{"technicians": [], "grants": ["*:tcp/1-65535"], "max_duration_s": 3600}]
}


async def test_auto_approve_everything_needs_the_password(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    w, sent = await owner_with_password(h, monkeypatch)
    policy = f"/v1/homes/{w.home_a}/policy"

    answer = await h.call("PUT", policy, w.owner_a, json=AUTO_APPROVE_EVERYTHING)
    assert answer.status_code == 403, answer.text
    assert "password" in answer.json()["detail"]
    bad = {"X-Ztb-Step-Up": "not my password"}
    assert (
        await h.call("PUT", policy, w.owner_a, json=AUTO_APPROVE_EVERYTHING, headers=bad)
    ).status_code == 403
    assert (await h.ok("GET", f"/v1/homes/{w.home_a}", w.owner_a))["policy"].get(
        "auto_approve", []
    ) == []
    assert sent == []

    # Tightening needs nothing; opening needs the password, and the owner is told.
    await h.ok("PUT", policy, w.owner_a, json={"max_duration_s": 600})
    good = {"X-Ztb-Step-Up": PASSWORD}
    await h.ok("PUT", policy, w.owner_a, json=AUTO_APPROVE_EVERYTHING, headers=good)
    assert audited(h, "home.protection_lowered") == [
        {"changes": ["longer sessions", "new auto-approve rules"], "step_up": "password"}
    ]
    assert [d.event for d in sent] == ["home.protection_lowered"]


async def test_moving_the_webhook_needs_step_up_and_tells_the_old_one(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    w, sent = await owner_with_password(h, monkeypatch)
    silence = {"webhook_url": None}
    home = f"/v1/homes/{w.home_a}"
    assert (await h.call("PATCH", home, w.owner_a, json=silence)).status_code == 403
    await h.ok("PATCH", home, w.owner_a, json=silence, headers={"X-Ztb-Step-Up": PASSWORD})
    assert [(d.event, d.url) for d in sent] == [
        ("home.protection_lowered", "https://hooks.example.com/ann")
    ]
