"""The audit chain for admins: verify (against a pinned key and saved digests), export,
sign the tip now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from .. import audit
from ..access import require_role
from ..audit_verify import Witness, verify
from ..auth import Principal, broker_of, current_user
from ..errors import ApiError

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Me = Annotated[Principal, Depends(current_user)]
HEX64 = r"^[0-9a-f]{64}$"


class SavedDigest(BaseModel):
    seq: int = Field(ge=1)
    hash: str = Field(pattern=HEX64)
    number: int | None = Field(default=None, ge=1)
    digest: str | None = Field(default=None, pattern=HEX64)


class VerifyRequest(BaseModel):
    public_key: str | None = Field(default=None, max_length=64)
    against: list[SavedDigest] = Field(default_factory=list, max_length=100_000)


def _verify(request: Request, principal: Principal, body: VerifyRequest) -> dict[str, Any]:
    require_role(principal, ["admin"], "audit.verify")
    broker = broker_of(request)
    key = body.public_key or broker.signer.public_key
    try:
        public = audit.parse_public_key(key)
    except ValueError as exc:
        raise ApiError(422, f"public_key: {exc}") from None
    witnesses = [Witness(d.seq, d.hash, d.number, d.digest) for d in body.against]
    with broker.read() as db:
        return verify(
            db,
            key,
            public,
            now=broker.clock(),
            settings=broker.settings,
            pinned=body.public_key is not None,
            signed=broker.signer.last_signed,
            witnesses=witnesses,
        ).to_dict()


@router.get("/verify")
def verify_get(request: Request, principal: Me, public_key: str | None = None) -> dict[str, Any]:
    """Verify against ``public_key`` (pinned; default: the broker's own key, unpinned)."""
    return _verify(request, principal, VerifyRequest(public_key=public_key))


@router.post("/verify")
def verify_post(request: Request, principal: Me, body: VerifyRequest) -> dict[str, Any]:
    """Verify against a pinned key and digests saved by witnesses (``against``)."""
    return _verify(request, principal, body)


@router.get("/export")
def export(request: Request, principal: Me) -> StreamingResponse:
    require_role(principal, ["admin"], "audit.export")
    with broker_of(request).unit_of_work() as uow:
        lines = list(audit.export_lines(uow.db))
    return StreamingResponse(iter(lines), media_type="application/x-ndjson")


@router.post("/checkpoint")
def checkpoint(request: Request, principal: Me) -> dict[str, Any]:
    """Sign the tip now (if it moved); 409 when the chain since the broker's last
    signature does not verify."""
    require_role(principal, ["admin"], "audit.checkpoint")
    broker = broker_of(request)
    try:
        point = audit.sign_tip(broker)
    except audit.ChainBroken as exc:
        raise ApiError(409, f"not signed: {exc}") from None
    return {
        "seq": point["seq"] if point else None,
        "checkpoint": point,
        "public_key": broker.signer.public_key,
    }
