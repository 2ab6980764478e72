"""Sign-in: limited per account and per address, on a thread of its own at low priority.

Failed sign-ins are counted per account (the email as typed, so unknown emails count the
same and the answers reveal nothing) and per client address, in a moving window
(``limits``); past either limit every attempt, even with the right password, answers 429
until the window moves on, without hashing anything. The counts live in this process: each
replica counts its own.

Checking a password costs tens of milliseconds of CPU by design. In the shared worker
pool a flood of wrong passwords would take every thread, and on a small machine the
hashes would take every core, so a homeowner's revoke would queue behind them. Here the
flood queues for ``SIGN_IN_THREADS`` (a waiting request holds no thread), the hashing
thread runs at ``nice`` +10 so the rest of the broker gets the CPU first, and the hash
runs outside any database transaction (``users_service.login``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from fastapi import Request
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from . import users_service
from .auth import broker_of
from .config import Settings
from .errors import ApiError

SIGN_IN_THREADS = 1
NICENESS = 10


class FailureLimits:
    """Failed sign-ins per account and per client address, in a moving window."""

    def __init__(self, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._account: RateLimitItem = parse(settings.sign_in_failures_per_account)
        self._address: RateLimitItem = parse(settings.sign_in_failures_per_address)

    def _keys(self, email: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        return [(self._account, "account", email.lower()), (self._address, "address", address)]

    def retry_after(self, email: str, address: str) -> int | None:
        """Seconds until an attempt is heard again, or None if it may go ahead now."""
        for item, kind, key in self._keys(email, address):
            if not self._limiter.test(item, kind, key):
                reset = self._limiter.get_window_stats(item, kind, key).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None

    def failed(self, email: str, address: str) -> None:
        for item, kind, key in self._keys(email, address):
            self._limiter.hit(item, kind, key)


def _lower_priority() -> None:
    """On Linux a thread has its own nice value; elsewhere this is a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


def _executor(request: Request) -> ThreadPoolExecutor:
    state = request.app.state
    if getattr(state, "sign_in_executor", None) is None:
        state.sign_in_executor = ThreadPoolExecutor(
            SIGN_IN_THREADS, thread_name_prefix="ztb-sign-in", initializer=_lower_priority
        )
    executor: ThreadPoolExecutor = state.sign_in_executor
    return executor


def _limits(request: Request) -> FailureLimits:
    state = request.app.state
    if getattr(state, "sign_in_limits", None) is None:
        state.sign_in_limits = FailureLimits(broker_of(request).settings)
    limits: FailureLimits = state.sign_in_limits
    return limits


async def sign_in(request: Request, email: str, password: str, totp: str | None) -> dict[str, Any]:
    """``users_service.login`` on the sign-in thread: a token, ``ApiError`` 401, or 429
    once the account or the address has failed too often."""
    limits = _limits(request)
    address = request.client.host if request.client else "unknown"
    wait = limits.retry_after(email, address)
    if wait is not None:
        raise ApiError(429, f"too many failed sign-ins; try again in {wait} s")
    work = partial(users_service.login, broker_of(request), email, password, totp)
    try:
        return await asyncio.get_running_loop().run_in_executor(_executor(request), work)
    except ApiError as exc:
        if exc.status == 401:
            limits.failed(email, address)
        raise
