"""The home agent's endpoints: CA, enroll, renew, long-poll desired state, report back
(HTTP adapters of ``agent_service`` and ``longpoll``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..agent_auth import current_agent
from ..agent_service import ca_pem, enroll, receive_report, renew
from ..auth import AgentPrincipal, broker_of
from ..longpoll import next_state
from ..schemas import Enrollment, Renewal

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


@router.get("/state", response_model=None)
async def state(
    request: Request,
    agent: AgentId,
    after: Annotated[int, Query(ge=-1)] = -1,
    wait: Annotated[float, Query(ge=0)] = 25,
) -> Response:
    """The home's desired state once its revision passes ``after``; 204 after ``wait`` s."""
    document = await next_state(broker_of(request), agent, after, wait)
    if document is None:
        return Response(status_code=204)
    return Response(document, media_type="application/json")


@router.post("/report", status_code=204)
async def report(request: Request, agent: AgentId) -> Response:
    """Parsed by ``netpolicy.AgentReport`` (not a request schema here): one model for
    the agent that writes it and the broker that reads it."""
    body = await request.body()
    await run_in_threadpool(receive_report, broker_of(request), agent, body)
    return Response(status_code=204)
