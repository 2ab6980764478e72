"""A stolen token gives no lasting access (issue 10 item 6).

The thief used to change the password without the old one (locking the owner out) and
mint a one-year token that outlived the revocation of the stolen one. Now: the password
change needs step-up, tokens minted by a token die with it and never outlive it, lifetimes
are capped by the operator, and "sign out everywhere" revokes the lot.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"
YEAR_S = 365 * 24 * 3600


async def sign_in(h: Harness, password: str = PASSWORD) -> dict[str, str]:
    body = {"email": "ann@example.com", "password": password}
    answer = await h.call("POST", "/v1/auth/login", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, str] = answer.json()
    return result


async def works(h: Harness, token: str) -> bool:
    return (await h.call("GET", "/v1/me", token)).status_code == 200


async def test_password_change_needs_the_current_password(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})  # the first
    thief = await h.call("POST", "/v1/me/password", w.owner_a, json={"password": "thief's own pw"})
    assert thief.status_code == 403, thief.text
    assert "password" in thief.json()["detail"]
    guess = {"X-Ztb-Step-Up": "a wrong guess"}
    body = {"password": "thief's own pw"}
    assert (
        await h.call("POST", "/v1/me/password", w.owner_a, json=body, headers=guess)
    ).status_code == 403
    login = {"email": "ann@example.com", "password": PASSWORD}
    assert (await h.call("POST", "/v1/auth/login", json=login)).status_code == 200  # not locked out
    new = {"password": "a brand new passphrase"}
    await h.ok("POST", "/v1/me/password", w.owner_a, json=new, headers={"X-Ztb-Step-Up": PASSWORD})
    assert (await h.call("POST", "/v1/auth/login", json={**login, **new})).status_code == 200


async def test_minted_tokens_die_with_the_stolen_one(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})
    stolen = await sign_in(h)
    me = w.ids["owner_a"]
    # The one-year token is over the operator's cap (30 days by default).
    year = await h.call("POST", f"/v1/users/{me}/tokens", stolen["token"], json={"ttl_s": YEAR_S})
    assert year.status_code == 422, year.text
    child = await h.ok("POST", f"/v1/users/{me}/tokens", stolen["token"], json={"ttl_s": 86400})
    grandchild = await h.ok("POST", f"/v1/users/{me}/tokens", child["token"], json={})
    for minted in (child, grandchild):  # never outlives the stolen login token (12 h)
        assert datetime.fromisoformat(minted["expires_at"]) <= datetime.fromisoformat(
            stolen["expires_at"]
        )
    assert await works(h, grandchild["token"])

    await h.ok("DELETE", f"/v1/tokens/{stolen['id']}", w.owner_a)  # the owner revokes it
    for token in (stolen, child, grandchild):
        assert not await works(h, token["token"])
    assert await works(h, w.owner_a)


async def test_step_up_mints_a_token_that_stands_alone_within_the_cap(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})
    parent = await sign_in(h)
    me = w.ids["owner_a"]
    alone = await h.ok(
        "POST",
        f"/v1/users/{me}/tokens",
        parent["token"],
        json={"ttl_s": 7 * 86400},
        headers={"X-Ztb-Step-Up": PASSWORD},
    )
    await h.ok("DELETE", f"/v1/tokens/{parent['id']}", w.owner_a)
    assert await works(h, alone["token"])


async def test_sign_out_everywhere_revokes_every_token(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})
    tokens = [w.owner_a, (await sign_in(h))["token"], (await sign_in(h))["token"]]
    me = w.ids["owner_a"]
    tokens.append((await h.ok("POST", f"/v1/users/{me}/tokens", tokens[1], json={}))["token"])
    answer = await h.ok("POST", "/v1/me/sign-out-everywhere", tokens[2])
    assert answer == {"revoked": 4}
    assert [await works(h, t) for t in tokens] == [False] * 4
    assert await works(h, w.owner_b)  # nobody else's
