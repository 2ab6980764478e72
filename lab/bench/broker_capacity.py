"""Broker capacity: session lifecycles per second, and long-poll fan-out to many agents.

``lifecycles_per_second`` drives request -> approve -> wg-quick -> revoke through the real
app, either over real HTTP(S) on loopback (``uvicorn`` in a child process, as ``ztb broker
serve`` runs it, JSON request logs to a file) or in-process (``httpx.ASGITransport``).
Each of ``concurrency`` workers has its own home, homeowner and technician.

``fanout`` enrolls ``agents`` agents in one home (real client certificates from the broker
CA), has each long-poll ``GET /v1/agent/state`` over its own mTLS connection, bumps the
home's revision once (an approval) and times until every agent has its new document.

Both are bounded by a count and a time limit, listen on 127.0.0.1 only, and remove their
temporary data directory and child process on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from agent.broker_link.enroll import new_tls_key_and_csr
from broker.bootstrap import bootstrap
from broker.config import Settings
from broker.pki import CA_CERT_FILE
from ztb.wgkeys import key_pair

from .stats import Summary

LIFECYCLES_GOAL_PER_S = 200.0
FANOUT_P99_GOAL_S = 1.0
BROKER_RSS_GOAL_MB = 300.0
SERVER_START_TIMEOUT_S = 30.0
LONGPOLL_WAIT_S = 60
# SQLite's busy timeout and uvicorn's backlog are the limits; keep well under both.
MAX_CONCURRENCY = 64
MAX_AGENTS = 5000


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _ok(client: httpx.AsyncClient, method: str, path: str, token: str, **kw: Any) -> Any:
    response = await client.request(method, path, headers=_bearer(token), **kw)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
    return response.json() if response.content else None


@dataclass(frozen=True, slots=True)
class Tenant:
    """One home with its owner and a technician allowed to ask for access."""

    home_id: str
    owner: str
    technician: str


@dataclass
class Setup:
    data_dir: Path
    admin: str
    tenants: list[Tenant] = field(default_factory=list)


async def _provision(client: httpx.AsyncClient, setup: Setup, homes: int) -> None:
    """Homes with a device and an enrolled agent (the config download needs its key)."""
    _, csr_pem = new_tls_key_and_csr("ztb-bench")
    admin = setup.admin
    for index in range(homes):
        owner = await _ok(
            client,
            "POST",
            "/v1/users",
            admin,
            json={"email": f"owner{index}@bench.test", "role": "homeowner"},
        )
        tech = await _ok(
            client,
            "POST",
            "/v1/users",
            admin,
            json={"email": f"tech{index}@bench.test", "role": "technician"},
        )
        home = await _ok(
            client,
            "POST",
            "/v1/homes",
            admin,
            json={"name": f"home{index}", "owner": owner["id"], "lan": "192.168.1.0/24"},
        )
        await _ok(
            client,
            "POST",
            f"/v1/homes/{home['id']}/devices",
            owner["token"],
            json={"name": "tv", "ip": "192.168.1.30"},
        )
        await _enroll(client, admin, home["id"], csr_pem)
        setup.tenants.append(Tenant(home["id"], owner["token"], tech["token"]))


async def _enroll(client: httpx.AsyncClient, admin: str, home_id: str, csr_pem: str) -> Any:
    minted = await _ok(client, "POST", f"/v1/homes/{home_id}/enroll-token", admin, json={})
    body = {
        "token": minted["token"],
        "csr_pem": csr_pem,
        "wg_public_key": key_pair()[1],
        "interface": "ztb0",
        "listen_port": 51820,
        "endpoint": "203.0.113.10:51820",
    }
    response = await client.post("/v1/agent/enroll", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"enroll: {response.status_code} {response.text[:200]}")
    return response.json()


@contextlib.asynccontextmanager
async def _in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from broker.app import create_app

    app = create_app(settings)
    broker = app.state.broker
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            yield client
    finally:
        broker.webhooks.close()
        broker.engine.dispose()


@contextlib.contextmanager
def _temporary_broker(db_url: str | None) -> Iterator[tuple[Settings, str]]:
    with tempfile.TemporaryDirectory(prefix="ztb-capacity-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "broker", db_url=db_url)
        admin = bootstrap(settings, "admin@bench.test")["token"]
        yield settings, str(admin)


@dataclass
class Server:
    """``uvicorn`` serving the broker in a child process on a loopback socket we bound."""

    process: subprocess.Popen[bytes]
    base_url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


@contextlib.contextmanager
def _served(settings: Settings, *, tls: bool) -> Iterator[Server]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    log = (settings.data_dir / "broker.log").open("wb")
    argv = [sys.executable, "-m", "lab.bench.broker_capacity", "serve",
            "--fd", str(listener.fileno()), "--data-dir", str(settings.data_dir)]  # fmt: skip
    if settings.db_url:
        argv += ["--db", settings.db_url]
    if tls:
        argv.append("--tls")
    process = subprocess.Popen(argv, pass_fds=[listener.fileno()], stdout=log, stderr=log)
    listener.close()
    scheme = "https" if tls else "http"
    server = Server(process, f"{scheme}://127.0.0.1:{port}")
    try:
        _wait_ready(server, settings)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def _verify(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.data_dir / CA_CERT_FILE)


def _wait_ready(server: Server, settings: Settings) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    verify: ssl.SSLContext | bool = (
        _verify(settings) if server.base_url.startswith("https") else False
    )
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"broker exited with {server.process.returncode} at start")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/healthz", verify=verify, timeout=1).is_success:
                return
        time.sleep(0.1)
    raise RuntimeError(f"broker did not answer /healthz within {SERVER_START_TIMEOUT_S}s")


def _memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "max_rss_mb": fields["VmHWM"]}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(values: list[float], digits: int) -> dict[str, float]:
    s = Summary.of(values)
    figures = {"n": s.trials, "median": s.median, "p99": s.p99, "max": s.maximum}
    return {name: round(value, digits) for name, value in figures.items()}


@dataclass
class _Run:
    left: int
    deadline: float
    done: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def note(self, step: str, seconds: float) -> None:
        self.latencies.setdefault(step, []).append(seconds * 1000)


# One call of the lifecycle: (method, path, bearer token, JSON body) -> (status, body).
Call = Callable[[str, str, str, Any], Awaitable[tuple[int, bytes]]]


def _asgi_call(client: httpx.AsyncClient) -> Call:
    async def call(method: str, path: str, token: str, body: Any) -> tuple[int, bytes]:
        response = await client.request(method, path, headers=_bearer(token), json=body)
        return response.status_code, response.content

    return call


class _Connection:
    """One kept-alive HTTP/1.1 connection with a minimal client: httpx costs ~2 ms of CPU
    per request, so with it the load generator, not the broker, would fill the machine."""

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        self.port, self.tls = port, tls
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __call__(self, method: str, path: str, token: str, body: Any) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(
                "127.0.0.1",
                self.port,
                ssl=self.tls,
                server_hostname="127.0.0.1" if self.tls else None,
            )
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        return await _http_request(*self.streams, f"{method} {path}", head, payload)

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self.streams[1].wait_closed()


async def _timed(run: _Run, step: str, call: Call, *args: Any) -> bytes:
    started = time.perf_counter()
    status, body = await call(*args)
    run.note(step, time.perf_counter() - started)
    if status >= 300:
        raise RuntimeError(f"{step}: {status} {body[:200]!r}")
    return body


async def _lifecycles(call: Call, tenant: Tenant, run: _Run) -> None:
    tech, owner = tenant.technician, tenant.owner
    while run.left > 0 and time.monotonic() < run.deadline:
        run.left -= 1
        body = {
            "home": tenant.home_id,
            "grants": ["tv:tcp/443"],
            "duration_s": 1800,
            "reason": "capacity",
            "public_key": key_pair()[1],
        }
        created = await _timed(run, "request", call, "POST", "/v1/sessions", tech, body)
        path = f"/v1/sessions/{json.loads(created)['id']}"
        await _timed(run, "approve", call, "POST", f"{path}/approve", owner, None)
        await _timed(run, "config", call, "GET", f"{path}/wg-quick", tech, None)
        await _timed(run, "revoke", call, "POST", f"{path}/revoke", tech, None)
        run.done += 1


async def _drive(calls: list[Call], tenants: list[Tenant], n: int, limit: float) -> dict[str, Any]:
    run = _Run(left=n, deadline=time.monotonic() + limit)
    started = time.perf_counter()
    await asyncio.gather(
        *(_lifecycles(call, tenant, run) for call, tenant in zip(calls, tenants, strict=True))
    )
    elapsed = time.perf_counter() - started
    steps = {step: _summary(values, 2) for step, values in run.latencies.items()}
    return {
        "lifecycles": run.done,
        "seconds": round(elapsed, 3),
        "lifecycles_per_s": round(run.done / elapsed, 1),
        "requests_per_s": round(4 * run.done / elapsed, 1),
        "latency_ms": steps,
    }


def lifecycles_per_second(
    n: int = 2000,
    seconds_limit: float = 30.0,
    *,
    concurrency: int = 8,
    mode: str = "http",
    db_url: str | None = None,
) -> dict[str, Any]:
    """Session lifecycles (request, approve, wg-quick, revoke) per second.

    ``mode``: ``http`` (uvicorn child process, plain HTTP on loopback), ``https`` (the same
    behind the broker's TLS server) or ``asgi`` (in-process, no sockets). Stops after ``n``
    lifecycles or ``seconds_limit`` seconds, whichever comes first.
    """
    if mode not in ("http", "https", "asgi"):
        raise ValueError(f"mode must be http, https or asgi, not {mode!r}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}")
    with _temporary_broker(db_url) as (settings, admin):
        setup = Setup(settings.data_dir, admin)

        async def provision() -> None:
            async with _in_process(settings) as client:
                await _provision(client, setup, concurrency)

        asyncio.run(provision())
        result: dict[str, Any] = {"mode": mode, "concurrency": concurrency}
        result["database"] = _database_label(settings)
        if mode == "asgi":

            async def in_process() -> dict[str, Any]:
                async with _in_process(settings) as client:
                    calls = [_asgi_call(client)] * len(setup.tenants)
                    return await _drive(calls, setup.tenants, n, seconds_limit)

            return result | asyncio.run(in_process())
        with _served(settings, tls=mode == "https") as server:

            async def over_http() -> dict[str, Any]:
                tls = _verify(settings) if mode == "https" else None
                connections = [_Connection(server.port, tls) for _ in setup.tenants]
                try:
                    return await _drive(list(connections), setup.tenants, n, seconds_limit)
                finally:
                    for connection in connections:
                        await connection.close()

            cpu_before = _cpu_s(server.pid)
            result |= asyncio.run(over_http())
            broker_cpu_s = _cpu_s(server.pid) - cpu_before
            # The load generator shares the machine: this splits the cost between the two.
            result["broker_cpu_ms_per_lifecycle"] = round(
                1000 * broker_cpu_s / max(1, result["lifecycles"]), 2
            )
            result["broker_memory"] = _memory_mb(server.pid)
        return result


def _database_label(settings: Settings) -> str:
    url = settings.database_url
    if url.startswith("sqlite"):
        synchronous = "full" if "synchronous=full" in url else "normal"
        return f"sqlite (WAL, synchronous={synchronous})"
    return url.split(":", 1)[0]


# --- fan-out -------------------------------------------------------------------------------


async def _http_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request_line: str,
    headers: str = "",
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange on a kept-alive connection (``Content-Length`` answers only):
    small and cheap, so the figures measure the broker, not the client library."""
    head = f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.readuntil(b"\r\n\r\n")
    lines = answer.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding":
            raise RuntimeError(f"unexpected Transfer-Encoding: {value.strip()}")
    return status, (await reader.readexactly(length) if length else b"")


async def _agent_longpoll(
    tls: ssl.SSLContext, port: int, woken: list[float], ready: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1"
    )
    try:
        status, body = await _http_request(reader, writer, "GET /v1/agent/state?after=-1&wait=0")
        if status != 200:
            raise RuntimeError(f"first state fetch: {status} {body[:200]!r}")
        revision = json.loads(body)["revision"]
        ready.append(revision)
        path = f"/v1/agent/state?after={revision}&wait={LONGPOLL_WAIT_S}"
        status, body = await _http_request(reader, writer, f"GET {path}")
        woken.append(time.perf_counter())
        if status != 200 or json.loads(body)["revision"] <= revision:
            raise RuntimeError(f"long-poll answered {status} without a newer revision")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _agent_contexts(
    settings: Settings, certificates: list[str], key_pem: bytes
) -> list[ssl.SSLContext]:
    """One client TLS context per agent: its own certificate (all share one key)."""
    work = settings.data_dir / "bench-agents"
    work.mkdir(mode=0o700)
    key_file = work / "agent.key"
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    agents = []
    for index, certificate in enumerate(certificates):
        cert_file = work / f"agent{index}.pem"
        cert_file.write_text(certificate)
        context = _verify(settings)
        context.load_cert_chain(cert_file, key_file)
        agents.append(context)
    return agents


async def _waiting_longpolls(client: httpx.AsyncClient) -> int:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("ztb_agent_longpolls_waiting "):
            return int(float(line.split()[1]))
    return 0


def fanout(agents: int = 1000, seconds_limit: float = 120.0) -> dict[str, Any]:
    """Time from one revision bump to every one of ``agents`` long-polls answered, and the
    broker's memory with them all connected (real HTTPS, one mTLS connection per agent)."""
    if not 1 <= agents <= MAX_AGENTS:
        raise ValueError(f"agents must be 1..{MAX_AGENTS}")
    deadline = time.monotonic() + seconds_limit
    with _temporary_broker(None) as (settings, admin):
        setup = Setup(settings.data_dir, admin)
        key, csr_pem = new_tls_key_and_csr("ztb-bench-agent")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        certificates: list[str] = []

        async def provision() -> None:
            async with _in_process(settings) as client:
                await _provision(client, setup, 1)
                home = setup.tenants[0].home_id
                for _ in range(agents):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"enrolling {agents} agents took over the limit")
                    enrolled = await _enroll(client, admin, home, csr_pem)
                    certificates.append(enrolled["certificate_pem"])

        started = time.perf_counter()
        asyncio.run(provision())
        enroll_s = time.perf_counter() - started
        contexts = _agent_contexts(settings, certificates, key_pem)
        with _served(settings, tls=True) as server:
            result = asyncio.run(_fan_out(server, settings, setup, contexts, deadline))
            result["broker_memory"] = _memory_mb(server.pid)
        result["agents"] = agents
        result["enroll_s"] = round(enroll_s, 1)
        return result


async def _fan_out(
    server: Server, settings: Settings, setup: Setup, agents: list[ssl.SSLContext], deadline: float
) -> dict[str, Any]:
    tenant = setup.tenants[0]
    woken: list[float] = []
    ready: list[int] = []
    port = server.port
    async with httpx.AsyncClient(
        base_url=server.base_url, verify=_verify(settings), timeout=30
    ) as client:
        connect_started = time.perf_counter()
        polls = [
            asyncio.create_task(_agent_longpoll(agent, port, woken, ready)) for agent in agents
        ]
        while await _waiting_longpolls(client) < len(agents):
            failed = [task for task in polls if task.done()]
            if failed:
                await failed[0]  # raises what went wrong
                raise RuntimeError("a long-poll ended before the revision bump")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ready)} of {len(agents)} agents connected in time")
            await asyncio.sleep(0.2)
        connected_s = time.perf_counter() - connect_started
        memory_waiting = _memory_mb(server.process.pid)
        body = {
            "home": tenant.home_id,
            "grants": ["tv:tcp/443"],
            "duration_s": 1800,
            "reason": "fan-out",
        }
        created = await _ok(client, "POST", "/v1/sessions", tenant.technician, json=body)
        bumped = time.perf_counter()
        await _ok(client, "POST", f"/v1/sessions/{created['id']}/approve", tenant.owner)
        approved_s = time.perf_counter() - bumped
        remaining = max(1.0, deadline - time.monotonic())
        await asyncio.wait_for(asyncio.gather(*polls), timeout=remaining)
    wake = [(moment - bumped) for moment in woken]
    return {
        "connect_all_s": round(connected_s, 2),
        "approve_response_s": round(approved_s, 4),
        "wake_s": _summary(wake, 4),
        "all_woken_s": round(max(wake), 4),
        "broker_memory_while_waiting": memory_waiting,
    }


# --- child process: the broker under test ----------------------------------------------------


def _serve(fd: int, data_dir: Path, db_url: str | None, tls: bool) -> None:
    """What ``ztb broker serve`` runs, on an inherited listening socket, JSON logs on stderr."""
    import logging

    import uvicorn

    from broker.app import create_app
    from broker.jsonlog import configure

    configure(logging.INFO)
    app = create_app(Settings(data_dir=data_dir, db_url=db_url))
    options: dict[str, Any] = {"log_config": None, "access_log": False, "backlog": 2048}
    if tls:
        from broker.tls_server import https_config

        config = https_config(app, data_dir, "127.0.0.1", 0, **options)
    else:
        config = uvicorn.Config(app, **options)
    # Not ``fd=``: uvicorn takes that for a Unix socket, and asyncio then skips TCP_NODELAY
    # (Nagle + delayed ACK add 40 ms to every kept-alive request).
    listener = socket.socket(fileno=fd)
    uvicorn.Server(config).run(sockets=[listener])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.broker_capacity")
    commands = parser.add_subparsers(dest="command", required=True)
    life = commands.add_parser("lifecycles", help="session lifecycles per second")
    life.add_argument("--n", type=int, default=2000)
    life.add_argument("--seconds", type=float, default=30.0)
    life.add_argument("--concurrency", type=int, default=8)
    life.add_argument("--mode", choices=["http", "https", "asgi"], default="http")
    life.add_argument("--db")
    fan = commands.add_parser("fanout", help="long-poll fan-out to many agents")
    fan.add_argument("--agents", type=int, default=1000)
    fan.add_argument("--seconds", type=float, default=180.0)
    serve = commands.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("--fd", type=int, required=True)
    serve.add_argument("--data-dir", type=Path, required=True)
    serve.add_argument("--db")
    serve.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    if args.command == "serve":
        _serve(args.fd, args.data_dir, args.db, args.tls)
        return
    if args.command == "lifecycles":
        result = lifecycles_per_second(
            args.n, args.seconds, concurrency=args.concurrency, mode=args.mode, db_url=args.db
        )
    else:
        result = fanout(args.agents, args.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
