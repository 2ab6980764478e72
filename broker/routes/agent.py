"""The home agent's endpoints: CA, enroll, renew, long-poll desired state, report back."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..agent_service import ca_pem, enroll, record_report, renew, state_at_revision
from ..auth import AgentPrincipal, broker_of, current_agent, revision_if_still_accepted
from ..context import Broker, UnitOfWork
from ..errors import ApiError
from ..notifier import wait_for_change
from ..schemas import Enrollment, Renewal, Report

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
    """Read-only: a revision bump wakes every agent of the home at once, and their reads
    must run side by side, not queue for the write lock. The document of a revision is
    built once for all of them (``broker.desired_states``)."""
    with broker.read_rows() as connection:
        revision = revision_if_still_accepted(connection, agent)
        if revision is None:
            raise ApiError(401, "agent certificate is unknown, replaced or revoked")
        if revision <= after:
            return None
        now = broker.clock()
        state = broker.desired_states.get(
            agent.home_id,
            revision,
            lambda: state_at_revision(connection, agent.home_id, revision, now),
        )
    return state.render(broker.clock())


@router.get("/state", response_model=None)
async def state(
    request: Request,
    agent: AgentId,
    after: Annotated[int, Query(ge=-1)] = -1,
    wait: Annotated[float, Query(ge=0)] = 25,
) -> Response:
    """The home's desired state once its revision passes ``after``; 204 after ``wait`` s."""
    broker = broker_of(request)
    deadline = time.monotonic() + min(wait, broker.settings.longpoll_max_s)
    broker.metrics.longpolls.inc()
    try:
        while True:
            change = broker.notifier.subscribe(agent.home_id)
            document = await run_in_threadpool(_state_if_newer, broker, agent, after)
            if document is not None:
                return Response(document, media_type="application/json")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await wait_for_change(change, remaining):
                return Response(status_code=204)
    finally:
        broker.metrics.longpolls.dec()


@router.post("/report", status_code=204)
def report(request: Request, agent: AgentId, body: Report) -> Response:
    def work(uow: UnitOfWork) -> None:
        record_report(uow, agent, body.model_dump())

    broker_of(request).run(work)
    return Response(status_code=204)
