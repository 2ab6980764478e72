"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..auth import broker_of

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> Response:
    try:
        with broker_of(request).engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return Response('{"detail": "database unreachable"}', 503, media_type="application/json")
    return Response('{"status": "ready"}', media_type="application/json")


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(broker_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
