"""The FastAPI application factory: wiring, error shapes, limits, logs, metrics, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from netpolicy import PolicyError

from . import audit, pki, secret_key
from .agent_standing import write_last_seen
from .clock import Clock, system_clock
from .config import Settings
from .context import Broker
from .db.engine import make_engine, migrate, session_factory
from .errors import ApiError
from .expiry import run_maintenance
from .metrics import Metrics
from .notifier import InProcessNotifier
from .pg_notifier import PostgresNotifier
from .routes import agent, homes, identity, ops, sessions
from .routes import audit as audit_routes
from .webhook_targets import WebhookTargets, parse_networks
from .webhooks import WebhookSender

log = logging.getLogger("ztb.broker")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, counting what actually arrives."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen, refused = 0, False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                refused = True
                await self._refuse(send)
                return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, send_unless_refused)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body is over {self.limit} bytes"}, 413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _flatten(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one readable sentence."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _install_error_handlers(app: FastAPI, broker: Broker) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.denial is not None:
            await run_in_threadpool(broker.record_denial, exc.denial)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)

    @app.exception_handler(PolicyError)
    async def policy_error(_: Request, exc: PolicyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _flatten(exc)}, 422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return JSONResponse({"detail": "internal error; see the broker log"}, 500)


class AccessLog:
    """Metrics and one JSON log line per request. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` (``@app.middleware``) costs a task and a stream per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, note_status)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    # After a trusted proxy's X-Forwarded-For/-Proto (broker.listeners).
                    "client": (scope.get("client") or ("",))[0],
                    "scheme": scope.get("scheme"),
                },
            )


async def _maintenance_loop(broker: Broker) -> None:
    """At start (checks the audit chain since the last checkpoint, signs the tip), then
    every ``maintenance_interval_s``."""
    while True:
        try:
            await run_in_threadpool(run_maintenance, broker)
        except Exception:
            log.exception("maintenance pass failed")
        await asyncio.sleep(broker.settings.maintenance_interval_s)


def _load_ca(settings: Settings) -> pki.CertificateAuthority | None:
    """The CA that ``bootstrap`` made; without one, agents cannot enroll (409)."""
    if not (settings.data_dir / pki.CA_CERT_FILE).exists():
        return None
    return pki.load_ca(settings.data_dir)


def create_app(
    settings: Settings,
    *,
    clock: Clock = system_clock,
    webhook_transport: httpx.BaseTransport | None = None,
) -> FastAPI:
    """A ready broker: schema migrated, signing key loaded. The periodic expiry and
    checkpoint job runs while the ASGI lifespan is up (``serve``); tests call
    ``run_maintenance(app.state.broker)`` themselves."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    box = secret_key.attach_key(settings, engine)
    migrate(engine)
    secret_key.check_fingerprint(engine, box)
    metrics = Metrics()
    broker = Broker(
        settings=settings,
        engine=engine,
        sessionmaker=session_factory(engine),
        clock=clock,
        notifier=(
            PostgresNotifier(engine) if engine.dialect.name == "postgresql" else InProcessNotifier()
        ),
        webhooks=WebhookSender(
            metrics,
            WebhookTargets(parse_networks(settings.webhook_allow)),
            attempts=settings.webhook_attempts,
            backoff_s=settings.webhook_backoff_s,
            transport=webhook_transport,
        ),
        signer=audit.Signer.load_or_create(settings.signing_key_path),
        metrics=metrics,
        ca=_load_ca(settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_maintenance_loop(broker))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await run_in_threadpool(write_last_seen, broker)
            broker.webhooks.close()
            broker.notifier.close()
            engine.dispose()

    app = FastAPI(title="ztb broker", version="1", lifespan=lifespan)
    app.state.broker = broker
    for module in (identity, homes, sessions, agent, audit_routes, ops):
        app.include_router(module.router)
    _install_error_handlers(app, broker)
    app.add_middleware(AccessLog, metrics=metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    from .web import install_web  # the pages build on the routes registered above

    install_web(app)
    return app
