"""The agents' long-poll: wait for a home's next revision, and share the read it costs.

A revision bump wakes every agent of the home at once (``notifier``). They share one read
(standing, revision, document) instead of each making its own, so 1,000 agents cost one
query; the document of a revision is built once per process (``state_cache``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from datetime import datetime

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection

from .agent_service import state_at_revision
from .agent_standing import home_standing, revision_if_still_accepted
from .auth import AgentPrincipal
from .context import Broker
from .errors import ApiError
from .notifier import wait_for_change
from .state_cache import StateAtRevision

_REFUSED = "agent certificate is unknown, replaced or revoked"


def _state(broker: Broker, connection: Connection, home_id: str, revision: int) -> StateAtRevision:
    now = broker.clock()
    return broker.desired_states.get(
        home_id, revision, lambda: state_at_revision(connection, home_id, revision, now)
    )


def _state_if_newer(broker: Broker, agent: AgentPrincipal, after: int) -> bytes | None:
    """Read-only: the agent's standing, the home's revision and, when newer than
    ``after``, the document of that revision (built once for all agents of the home)."""
    with broker.read_rows() as connection:
        revision = revision_if_still_accepted(connection, agent)
        if revision is None:
            raise ApiError(401, _REFUSED)
        if revision <= after:
            return None
        state = _state(broker, connection, agent.home_id, revision)
    return state.render(broker.clock())


@dataclass(frozen=True, slots=True)
class _HomeRead:
    """What every agent of a home woken by the same revision bump needs, read once."""

    revision: int
    serials: dict[str, set[str | None]]  # per unrevoked agent: the serials it may call with
    state: StateAtRevision

    def answer(self, agent: AgentPrincipal, after: int, now: datetime) -> bytes | None:
        if agent.serial not in self.serials.get(agent.agent_id, ()):
            raise ApiError(401, _REFUSED)
        return self.state.render(now) if self.revision > after else None


def _read_home(broker: Broker, home_id: str) -> _HomeRead:
    with broker.read_rows() as connection:
        revision, serials = home_standing(connection, home_id)
        return _HomeRead(revision, serials, _state(broker, connection, home_id, revision))


# Reads shared by the long-polls waiting for the same next change (the event they are
# subscribed to). Every read starts after its first subscriber subscribed, and a change
# it misses fires that very event, so a poll that got nothing new from it is woken again.
_shared_reads: weakref.WeakKeyDictionary[asyncio.Event, asyncio.Task[_HomeRead]] = (
    weakref.WeakKeyDictionary()
)


async def _read_home_shared(broker: Broker, home_id: str, next_change: asyncio.Event) -> _HomeRead:
    task = _shared_reads.get(next_change)
    if task is None:
        task = asyncio.ensure_future(run_in_threadpool(_read_home, broker, home_id))
        _shared_reads[next_change] = task
    return await asyncio.shield(task)  # one poll going away must not cancel the others' read


async def next_state(
    broker: Broker, agent: AgentPrincipal, after: int, wait_s: float
) -> bytes | None:
    """The home's desired state (JSON) once its revision passes ``after``; None when
    ``wait_s`` (capped by the settings) passed first. 401 once the agent is cut off."""
    deadline = time.monotonic() + min(wait_s, broker.settings.longpoll_max_s)
    broker.metrics.longpolls.inc()
    try:
        change = broker.notifier.subscribe(agent.home_id)
        document = await run_in_threadpool(_state_if_newer, broker, agent, after)
        while document is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await wait_for_change(change, remaining):
                return None
            change = broker.notifier.subscribe(agent.home_id)
            home = await _read_home_shared(broker, agent.home_id, change)
            document = home.answer(agent, after, broker.clock())
        return document
    finally:
        broker.metrics.longpolls.dec()
