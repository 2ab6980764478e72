"""The home agent's endpoints: enroll, long-poll desired state, report back."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..agent_service import desired_state, enroll, record_report
from ..auth import AgentPrincipal, broker_of, current_agent
from ..context import Broker, UnitOfWork
from ..db.models import Home
from ..notifier import wait_for_change
from ..schemas import Enrollment, Report

router = APIRouter(prefix="/v1/agent", tags=["agent"])
AgentId = Annotated[AgentPrincipal, Depends(current_agent)]


@router.post("/enroll", status_code=201)
def enroll_agent(request: Request, body: Enrollment) -> dict[str, Any]:
    return broker_of(request).run(lambda uow: enroll(uow, body.model_dump()))


def _state_if_newer(broker: Broker, home_id: str, after: int) -> dict[str, Any] | None:
    with broker.unit_of_work() as uow:
        home = uow.db.get(Home, home_id)
        assert home is not None
        if home.revision <= after:
            return None
        return desired_state(uow, home).to_dict()


@router.get("/state", response_model=None)
async def state(
    request: Request,
    agent: AgentId,
    after: Annotated[int, Query(ge=-1)] = -1,
    wait: Annotated[float, Query(ge=0)] = 25,
) -> dict[str, Any] | Response:
    """The home's desired state once its revision passes ``after``; 204 after ``wait`` s."""
    broker = broker_of(request)
    deadline = time.monotonic() + min(wait, broker.settings.longpoll_max_s)
    broker.metrics.longpolls.inc()
    try:
        while True:
            change = broker.notifier.subscribe(agent.home_id)
            document = await run_in_threadpool(_state_if_newer, broker, agent.home_id, after)
            if document is not None:
                return document
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
