"""Sign-in runs on a thread of its own, at a lower CPU priority.

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
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from fastapi import Request

from . import users_service
from .auth import broker_of

SIGN_IN_THREADS = 1
NICENESS = 10


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


async def sign_in(request: Request, email: str, password: str, totp: str | None) -> dict[str, Any]:
    """``users_service.login`` on the sign-in thread: a token, or ``ApiError`` 401."""
    work = partial(users_service.login, broker_of(request), email, password, totp)
    return await asyncio.get_running_loop().run_in_executor(_executor(request), work)
