"""The home agent's endpoints: CA, enroll, renew, long-poll desired state, report back."""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection

from ..agent_service import ca_pem, enroll, record_report, renew, state_at_revision
from ..auth import (
    AgentPrincipal,
    broker_of,
    current_agent,
    home_standing,
    revision_if_still_accepted,
)
from ..context import Broker, UnitOfWork
from ..errors import ApiError
from ..notifier import wait_for_change
from ..schemas import Enrollment, Renewal, Report
from ..state_cache import StateAtRevision

router = APIRouter(prefix="/v1/agent", tags=["agent"])
AgentId = Annotated[AgentPrincipal, Depends(current_agent)]


@router.get("/ca")
def ca(request: Request) -> dict[str, Any]:
    """No auth: the agent checks it against the fingerprint in its enrollment token."""
    with broker_of(request).unit_of_work() as uow:
        return ca_pem(uow)


@router.post("/enroll", status_code=201)
def enroll_agent(request: Request, body: Enrollment) -> dict[str, Any]:
    return broker_of(request).run(lambda uow: enroll(uow, body.model_dump()))


@router.post("/renew")
def renew_certificate(request: Request, agent: AgentId, body: Renewal) -> dict[str, Any]:
    return broker_of(request).run(lambda uow: renew(uow, agent, body.csr_pem))


def _state_if_newer(broker: Broker, agent: AgentPrincipal, after: int) -> bytes | None:
    """Read-only: the agent's standing, the home's revision and, when newer than
    ``after``, the document of that revision (built once for all agents of the home)."""
    with broker.read_rows() as connection:
        revision = revision_if_still_accepted(connection, agent)
        if revision is None:
            raise ApiError(401, "agent certificate is unknown, replaced or revoked")
        if revision <= after:
            return None
        state = _state(broker, connection, agent.home_id, revision)
    return state.render(broker.clock())


def _state(broker: Broker, connection: Connection, home_id: str, revision: int) -> StateAtRevision:
    now = broker.clock()
    return broker.desired_states.get(
        home_id, revision, lambda: state_at_revision(connection, home_id, revision, now)
    )


@dataclass(frozen=True, slots=True)
class _HomeRead:
    """What every agent of a home woken by the same revision bump needs, read once."""

    revision: int
    serials: dict[str, set[str | None]]  # per unrevoked agent: the serials it may call with
    state: StateAtRevision

    def answer(self, agent: AgentPrincipal, after: int, now: datetime) -> bytes | None:
        if agent.serial not in self.serials.get(agent.agent_id, ()):
            raise ApiError(401, "agent certificate is unknown, replaced or revoked")
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


@router.get("/state", response_model=None)
async def state(
    request: Request,
    agent: AgentId,
    after: Annotated[int, Query(ge=-1)] = -1,
    wait: Annotated[float, Query(ge=0)] = 25,
) -> Response:
    """The home's desired state once its revision passes ``after``; 204 after ``wait`` s.

    A revision bump wakes every agent of the home at once: they share one read (standing,
    revision, document) instead of each making its own, so 1,000 agents cost one query."""
    broker = broker_of(request)
    deadline = time.monotonic() + min(wait, broker.settings.longpoll_max_s)
    broker.metrics.longpolls.inc()
    try:
        change = broker.notifier.subscribe(agent.home_id)
        document = await run_in_threadpool(_state_if_newer, broker, agent, after)
        while document is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await wait_for_change(change, remaining):
                return Response(status_code=204)
            change = broker.notifier.subscribe(agent.home_id)
            home = await _read_home_shared(broker, agent.home_id, change)
            document = home.answer(agent, after, broker.clock())
        return Response(document, media_type="application/json")
    finally:
        broker.metrics.longpolls.dec()


@router.post("/report", status_code=204)
def report(request: Request, agent: AgentId, body: Report) -> Response:
    def work(uow: UnitOfWork) -> None:
        record_report(uow, agent, body.model_dump())

    broker_of(request).run(work)
    return Response(status_code=204)
