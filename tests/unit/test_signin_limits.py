"""Sign-in resists guessing (issue 11, sign-in hardening): failures are limited per account
and per client address; past a limit even the right password waits for the window, and
the answers do not tell which emails exist."""

from __future__ import annotations

import dataclasses
import time

import pytest

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"
WINDOW_S = 15  # longer than the 20 attempts take on a busy machine


def short_window(h: Harness, per_account: str, per_address: str) -> None:
    """The limits are read at the first sign-in: set them before it."""
    h.broker.settings = dataclasses.replace(
        h.broker.settings,
        sign_in_failures_per_account=per_account,
        sign_in_failures_per_address=per_address,
    )


async def attempt(h: Harness, email: str, password: str) -> tuple[int, str]:
    answer = await h.call("POST", "/v1/auth/login", json={"email": email, "password": password})
    return answer.status_code, answer.json().get("detail", "")


async def test_twenty_wrong_passwords_lock_the_account_until_the_window_passes(
    harness: Harness,
) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": PASSWORD})
    short_window(h, f"10/{WINDOW_S} seconds", f"1000/{WINDOW_S} seconds")
    answers = [await attempt(h, "ann@example.com", f"guess {n}") for n in range(10)]
    last_failure = time.monotonic()
    answers += [await attempt(h, "ann@example.com", f"guess {n}") for n in range(10, 20)]
    assert [status for status, _ in answers] == [401] * 10 + [429] * 10
    assert (await attempt(h, "ann@example.com", PASSWORD))[0] == 429  # even the right one
    # An email nobody has is treated alike: the answers tell nothing.
    ghost = [await attempt(h, "nobody@example.com", f"guess {n}") for n in range(11)]
    assert [status for status, _ in ghost] == [401] * 10 + [429]
    assert ghost[10][1].startswith(answers[10][1].split(";")[0])
    time.sleep(max(0.0, WINDOW_S + 0.2 - (time.monotonic() - last_failure)))
    assert (await attempt(h, "ann@example.com", PASSWORD))[0] == 200


async def test_one_password_sprayed_over_twenty_accounts_is_limited_too(
    harness: Harness,
) -> None:
    h = harness
    short_window(h, "10/15 minutes", "15/15 minutes")
    statuses = [(await attempt(h, f"user{n}@example.com", "Summer2026!"))[0] for n in range(20)]
    assert statuses == [401] * 15 + [429] * 5
