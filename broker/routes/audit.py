"""The audit chain for admins: verify, export, sign the tip now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from .. import audit
from ..access import require_role
from ..auth import Principal, broker_of, current_user

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Me = Annotated[Principal, Depends(current_user)]


@router.get("/verify")
def verify(request: Request, principal: Me) -> dict[str, Any]:
    require_role(principal, ["admin"], "audit.verify")
    broker = broker_of(request)
    with broker.unit_of_work() as uow:
        return audit.verify(uow.db, broker.signer.public_key).to_dict()


@router.get("/export")
def export(request: Request, principal: Me) -> StreamingResponse:
    require_role(principal, ["admin"], "audit.export")
    with broker_of(request).unit_of_work() as uow:
        lines = list(audit.export_lines(uow.db))
    return StreamingResponse(iter(lines), media_type="application/x-ndjson")


@router.post("/checkpoint")
def checkpoint(request: Request, principal: Me) -> dict[str, Any]:
    require_role(principal, ["admin"], "audit.checkpoint")
    broker = broker_of(request)
    with broker.unit_of_work() as uow:
        point = audit.checkpoint(uow.db, uow.now, broker.signer)
        head = point.seq if point else None
    return {"seq": head, "public_key": broker.signer.public_key}
