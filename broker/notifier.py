"""Wake agents' long-polls when their home's revision changes.

Behind a two-method interface so a PostgreSQL ``LISTEN/NOTIFY`` notifier can wake polls
served by other replicas. ``notify`` may be called from any thread (sync routes run in a
thread pool); waiters live on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Protocol


class Notifier(Protocol):
    def subscribe(self, home_id: str) -> asyncio.Event:
        """Call *before* reading the revision, so a change after the read still wakes us."""
        ...

    def notify(self, home_id: str) -> None: ...

    def close(self) -> None:
        """Stop background work (a listener connection); the app's shutdown calls it."""
        ...


class InProcessNotifier:
    """One ``asyncio.Event`` per home, replaced each time it fires."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def subscribe(self, home_id: str) -> asyncio.Event:
        self._loop = asyncio.get_running_loop()
        with self._lock:
            return self._events.setdefault(home_id, asyncio.Event())

    def notify(self, home_id: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # nobody has ever waited on this loop
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(self._fire, home_id)

    def close(self) -> None:
        pass  # nothing runs in the background

    def _fire(self, home_id: str) -> None:
        with self._lock:
            event = self._events.pop(home_id, None)
        if event is not None:
            event.set()


async def wait_for_change(event: asyncio.Event, timeout_s: float) -> bool:
    """True if woken, False on timeout."""
    try:
        await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout_s))
    except TimeoutError:
        return False
    return True
