"""Desired-state documents shared by every long-poll of a home, and agents' last-seen times.

A revision bump wakes every agent of the home at once; building the document (one query,
netpolicy validation) for each of them is most of the cost of the wake-up. The document of
a revision is built once and kept with each session's absolute ``expires_at``; every answer
then counts ``expires_in`` from its own moment, rounded down, so a kept document never
lengthens a lifetime. A newer revision replaces the kept one; an answer is only ever
rendered from the revision its own read saw.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class StateAtRevision:
    """One home's desired state at one revision, lifetimes as deadlines."""

    revision: int
    document: dict[str, Any]  # ``DesiredState.to_dict()`` without its sessions
    sessions: tuple[
        tuple[dict[str, Any], datetime], ...
    ]  # (session without expires_in, expires_at)

    def render(self, now: datetime) -> bytes:
        """The JSON answer at ``now``: time left in whole milliseconds, rounded down (the
        agent rounds its kernel timeouts again; whole seconds here would end access up to
        two seconds early); a session whose time is up is left out."""
        live = []
        for session, expires_at in self.sessions:
            left_ms = (expires_at - now) // _MILLISECOND
            if left_ms > 0:
                live.append({**session, "expires_in": left_ms / 1000})
        return json.dumps({**self.document, "sessions": live}).encode()


class DesiredStates:
    """The newest built ``StateAtRevision`` per home, in this process."""

    def __init__(self) -> None:
        self._by_home: dict[str, StateAtRevision] = {}
        self._building = threading.Lock()

    def get(
        self, home_id: str, revision: int, build: Callable[[], StateAtRevision]
    ) -> StateAtRevision:
        """The state at ``revision``, built by ``build`` (from the same read that saw
        ``revision``) unless already kept. One build at a time: the agents woken together
        wait for the first one's document instead of all building their own."""
        kept = self._by_home.get(home_id)
        if kept is not None and kept.revision == revision:
            return kept
        with self._building:
            kept = self._by_home.get(home_id)
            if kept is not None and kept.revision == revision:
                return kept
            built = build()
            if built.revision != revision:
                raise AssertionError("built a desired state for another revision")
            if kept is None or kept.revision < revision:
                self._by_home[home_id] = built
            return built


class LastSeen:
    """When each agent was last seen, noted in memory and written in batches by the
    maintenance job: a long-poll then costs no write transaction. A crash loses at most
    one maintenance interval of these times (nothing else)."""

    def __init__(self) -> None:
        self._pending: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def note(self, agent_id: str, now: datetime) -> None:
        with self._lock:
            self._pending[agent_id] = now

    def take(self) -> dict[str, datetime]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending
