"""The real broker app on a real SQLite file, driven in-process through httpx ASGITransport.

Time is a ``FakeClock`` the tests move; the periodic job is ``run_maintenance``. Agents
call with a real client certificate from the broker's CA: ``TlsTerminator`` plays the part
of ``broker.tls_server.PeerCertificateProtocol`` (the handshake itself is tested over
real TLS in test_mtls.py, test_cli_story.py and the lab).

The two-home ``World`` is built through the API once per run and per database backend;
each test starts from a copy of that data directory (and, on PostgreSQL, a database made
from the template database), so a test pays for a file copy, not ~25 API calls and a
schema migration. Parametrize ``harness`` with ``["sqlite", "postgresql"]`` (indirect) to
run a test on both databases; the default is SQLite.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.broker_link.enroll import new_tls_key_and_csr
from broker import pki
from broker.app import create_app
from broker.bootstrap import first_admin
from broker.config import Settings
from broker.context import Broker
from broker.expiry import run_maintenance
from ztb.wgkeys import key_pair

from .postgres_server import PostgresServer

CLIENT_CERT_HEADER = "x-harness-client-cert"
# Decorate a test with this to run it on SQLite and on a throwaway PostgreSQL cluster.
BOTH_DATABASES = pytest.mark.parametrize("harness", ["sqlite", "postgresql"], indirect=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class AgentCert:
    """An enrolled agent's client certificate, presented instead of a bearer token."""

    agent_id: str
    home_id: str
    certificate_pem: str

    @property
    def serial(self) -> str:
        return pki.serial_hex(x509.load_pem_x509_certificate(self.certificate_pem.encode()))


NO_AGENT = AgentCert("", "", "")


class TlsTerminator:
    """Moves the test's client certificate into the ASGI TLS extension, as uvicorn would
    after a verified handshake; requests without one arrive without a certificate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            pem = headers.pop(CLIENT_CERT_HEADER.encode(), b"").decode().replace("|", "\n")
            scope = {**scope, "headers": list(headers.items())}
            chain = [pem] if pem else []
            scope["extensions"] = {
                **scope.get("extensions", {}),
                "tls": {"client_cert_chain": chain},
            }
        await self.app(scope, receive, send)


def presenting(cert: AgentCert | str) -> dict[str, str]:
    pem = cert.certificate_pem if isinstance(cert, AgentCert) else cert
    return {CLIENT_CERT_HEADER: pem.strip().replace("\n", "|")}


def csr() -> str:
    return new_tls_key_and_csr("ztb-agent")[1]


@dataclass
class World:
    """Two homes, each with an owner, devices and an enrolled agent; two technicians."""

    admin: str
    owner_a: str = ""
    owner_b: str = ""
    tech_a: str = ""
    tech_b: str = ""
    home_a: str = ""
    home_b: str = ""
    agent_a: AgentCert = field(default_factory=lambda: NO_AGENT)
    agent_b: AgentCert = field(default_factory=lambda: NO_AGENT)
    ids: dict[str, str] = field(default_factory=dict)


def enroll_body(token: str, endpoint: str) -> dict[str, object]:
    """An agent's enrollment request with a fresh CSR and WireGuard key."""
    _, public = key_pair()
    return {
        "token": token,
        "csr_pem": csr(),
        "wg_public_key": public,
        "interface": "ztb0",
        "listen_port": 51820,
        "endpoint": endpoint,
    }


@dataclass
class Harness:
    client: httpx.AsyncClient
    broker: Broker
    clock: FakeClock
    data_dir: Path
    prebuilt: World | None = None

    async def call(
        self, method: str, path: str, token: str | AgentCert | None = None, **kwargs: Any
    ) -> httpx.Response:
        credential = presenting(token) if isinstance(token, AgentCert) else bearer(token or "")
        headers = {**(credential if token else {}), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, token: str | AgentCert, **kwargs: Any) -> Any:
        response = await self.call(method, path, token, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    async def user(self, admin: str, email: str, role: str) -> tuple[str, str]:
        body = await self.ok("POST", "/v1/users", admin, json={"email": email, "role": role})
        return body["id"], body["token"]

    async def home(self, admin: str, name: str, owner: str, lan: str) -> str:
        body = await self.ok(
            "POST", "/v1/homes", admin, json={"name": name, "owner": owner, "lan": lan}
        )
        return str(body["id"])

    async def enroll(self, admin: str, home: str, endpoint: str) -> AgentCert:
        minted = await self.ok("POST", f"/v1/homes/{home}/enroll-token", admin, json={})
        body = enroll_body(minted["token"], endpoint)
        response = await self.call("POST", "/v1/agent/enroll", json=body)
        assert response.status_code == 201, response.text
        answer = response.json()
        return AgentCert(answer["agent_id"], answer["home_id"], answer["certificate_pem"])

    async def world(self) -> World:
        """The two-home world, already in this test's copy of the database."""
        if self.prebuilt is None:
            self.prebuilt = await self.build_world()
        return self.prebuilt

    async def build_world(self) -> World:
        w = World(admin=first_admin(self.broker, "admin@example.com")["token"])
        w.ids["owner_a"], w.owner_a = await self.user(w.admin, "ann@example.com", "homeowner")
        w.ids["owner_b"], w.owner_b = await self.user(w.admin, "bert@example.com", "homeowner")
        w.ids["tech_a"], w.tech_a = await self.user(w.admin, "tina@example.com", "technician")
        w.ids["tech_b"], w.tech_b = await self.user(w.admin, "tom@example.com", "technician")
        w.home_a = await self.home(w.admin, "ann-house", "ann@example.com", "192.168.1.0/24")
        w.home_b = await self.home(w.admin, "bert-flat", "bert@example.com", "10.20.0.0/24")
        for home, owner, devices in (
            (w.home_a, w.owner_a, [("thermostat", "192.168.1.20"), ("tv", "192.168.1.30")]),
            (w.home_b, w.owner_b, [("camera", "10.20.0.40")]),
        ):
            for name, ip in devices:
                await self.ok(
                    "POST", f"/v1/homes/{home}/devices", owner, json={"name": name, "ip": ip}
                )
        w.agent_a = await self.enroll(w.admin, w.home_a, "203.0.113.10:51820")
        w.agent_b = await self.enroll(w.admin, w.home_b, "203.0.113.20:51820")
        return w

    async def request(
        self, tech: str, home: str, grants: list[str], duration_s: int = 1800, **extra: Any
    ) -> dict[str, Any]:
        body = {"home": home, "grants": grants, "duration_s": duration_s, "reason": "fix it"}
        result: dict[str, Any] = await self.ok("POST", "/v1/sessions", tech, json={**body, **extra})
        return result

    def maintenance(self) -> dict[str, int]:
        return run_maintenance(self.broker)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Template:
    """A data directory (and PostgreSQL template database) holding the built world."""

    data_dir: Path
    world: World
    database: str | None = None


def _settings(data_dir: Path, db_url: str | None) -> Settings:
    return Settings(data_dir=data_dir, db_url=db_url, webhook_backoff_s=0.05)


async def _started(settings: Settings, clock: FakeClock) -> Harness:
    app = create_app(settings, clock=clock)
    transport = httpx.ASGITransport(app=TlsTerminator(app))
    client = httpx.AsyncClient(transport=transport, base_url="http://broker")
    return Harness(client=client, broker=app.state.broker, clock=clock, data_dir=settings.data_dir)


async def _stopped(h: Harness) -> None:
    await h.client.aclose()
    h.broker.webhooks.close()
    h.broker.notifier.close()
    h.broker.engine.dispose()


def _in_own_loop(work: Coroutine[Any, Any, World]) -> World:
    """Session fixtures may be first asked for from inside a test's running event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def _build_template(data_dir: Path, db_url: str | None) -> World:
    settings = _settings(data_dir, db_url)
    clock = FakeClock()
    pki.load_or_create_ca(settings.data_dir, clock())

    async def build() -> World:
        h = await _started(settings, clock)
        try:
            return await h.build_world()
        finally:
            await _stopped(h)

    return _in_own_loop(build())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    data_dir = tmp_path_factory.mktemp("world-sqlite") / "broker"
    return Template(data_dir, _build_template(data_dir, None))


@pytest.fixture(scope="session")
def postgres_template(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Template:
    data_dir = tmp_path_factory.mktemp("world-postgresql") / "broker"
    database = postgres_server.create_database()
    world = _build_template(data_dir, postgres_server.url(database))
    return Template(data_dir, world, database)


@pytest.fixture
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    backend = getattr(request, "param", "sqlite")
    server: PostgresServer | None = None
    database = db_url = None
    if backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        template: Template = request.getfixturevalue("postgres_template")
        database = server.create_database(template=template.database)
        db_url = server.url(database)
    else:
        assert backend == "sqlite", backend
        template = request.getfixturevalue("sqlite_template")
    settings = _settings(tmp_path / "broker", db_url)
    shutil.copytree(template.data_dir, settings.data_dir)
    h = await _started(settings, FakeClock())
    h.prebuilt = copy.deepcopy(template.world)
    try:
        yield h
    finally:
        await _stopped(h)
        if server is not None and database is not None:
            server.drop_database(database)
