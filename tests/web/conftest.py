"""Browser tests of the web pages: a real broker on 127.0.0.1, real SQLite, Debian's chromium.

The broker runs in a thread (uvicorn on a socket bound here, so no port race); a clock with
an offset lets a test move time forward, so each TOTP code is a fresh one. Data is made
through the HTTP API with bearer tokens, as the CLI would. Under CI=true a missing chromium
or playwright fails the browser tests instead of skipping them.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pyotp
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.agent_service import record_report
from broker.app import create_app
from broker.auth import AgentPrincipal
from broker.bootstrap import bootstrap
from broker.config import Settings
from broker.web.security import CookiePolicy
from netpolicy import AgentReport
from tests.prerequisites import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, ViewportSize

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
PASSWORD = "correct horse battery"
STARTUP_S = 15.0
VIEWER_ZONE = "Europe/Berlin"  # not the machine's zone, so local-time display shows


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        default=None,
        help="save screenshots of the main pages (desktop and phone) to DIR",
    )


@pytest.fixture(scope="session")
def screenshot_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    chosen = request.config.getoption("--screenshots", default=None)
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _missing_browser() -> str | None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    missing = _missing_browser()
    if missing is not None:
        unavailable(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    launched = playwright_driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


@dataclass
class MovableClock:
    """Wall-clock time plus an offset the test can push forward."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Person:
    id: str
    email: str
    token: str
    totp_secret: str | None = None


@dataclass
class World:
    """The running broker and what the tests seed through its API."""

    base_url: str
    clock: MovableClock
    admin: httpx.Client
    app: Any
    made: int = 0

    def fresh(self, name: str) -> str:
        """``name`` made unique in this broker (tests share one): ``ana`` → ``ana3``."""
        self.made += 1
        return f"{name}{self.made}"

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def call(self, token: str, method: str, path: str, **kwargs: Any) -> Any:
        with self.api(token) as client:
            response = client.request(method, path, **kwargs)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    def person(self, email: str, role: str, *, totp: bool = False) -> Person:
        made = self.call(
            self.admin_token,
            "POST",
            "/v1/users",
            json={"email": email, "role": role, "password": PASSWORD},
        )
        who = Person(made["id"], made["email"], made["token"])
        if totp:
            who.totp_secret = self.call(who.token, "POST", "/v1/me/totp")["secret"]
            self.call(who.token, "POST", "/v1/me/totp/confirm", json={"code": self.totp(who)})
        return who

    def totp(self, who: Person) -> str:
        """A code for a step no earlier code used: time moves 30 s forward first."""
        assert who.totp_secret is not None
        self.clock.offset += timedelta(seconds=31)
        return str(pyotp.TOTP(who.totp_secret).at(self.clock()))

    @property
    def admin_token(self) -> str:
        return str(self.admin.headers["Authorization"].removeprefix("Bearer "))


@dataclass
class Home:
    id: str
    name: str
    owner: Person
    agent: AgentPrincipal | None = None


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"broker did not start within {STARTUP_S} s")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    clock = MovableClock()
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("broker") / "data", maintenance_interval_s=1.0
    )
    admin = bootstrap(settings, "admin@example.com", clock)  # CA, HTTPS certificate, first admin
    app = create_app(settings, clock=clock)
    app.state.web_cookies = CookiePolicy(secure=False)  # the tests speak plain HTTP
    server, thread, base_url = _serve(app)
    client = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {admin['token']}"}, timeout=10
    )
    try:
        yield World(base_url=base_url, clock=clock, admin=client, app=app)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)


def make_home(world: World, name: str, owner: Person, lan: str, devices: dict[str, str]) -> Home:
    """A home with devices and an agent enrolled the real way (token + CSR), so configs can
    be made."""
    made = world.call(
        world.admin_token,
        "POST",
        "/v1/homes",
        json={"name": name, "owner": owner.email, "lan": lan},
    )
    home = Home(made["id"], name, owner)
    for device, ip in devices.items():
        world.call(
            owner.token, "POST", f"/v1/homes/{home.id}/devices", json={"name": device, "ip": ip}
        )
    enroll = world.call(
        world.admin_token, "POST", f"/v1/homes/{home.id}/enroll-token", json={"ttl_s": 600}
    )
    agent = world.call(
        "-",
        "POST",
        "/v1/agent/enroll",
        json={
            "token": enroll["token"],
            "wg_public_key": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
            "interface": f"ztb{name[-4:]}",
            "listen_port": 51820,
            "endpoint": "203.0.113.10:51820",
            "csr_pem": _csr(),
        },
    )
    certificate = x509.load_pem_x509_certificate(agent["certificate_pem"].encode())
    home.agent = AgentPrincipal(agent["agent_id"], home.id, format(certificate.serial_number, "x"))
    return home


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test agent")])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def agent_reports(world: World, home: Home, session: dict[str, Any], sent_bytes: int) -> None:
    """What the router's agent would say: applied the revision, one handshake, counters.

    The agent endpoints need a TLS client certificate and these tests speak plain HTTP, so
    the report goes straight to the service function the report endpoint calls."""
    agent = home.agent
    assert agent is not None
    revision = world.call(world.admin_token, "GET", f"/v1/homes/{home.id}")["revision"]
    grant = session["grants"][0]
    report = {
        "revision": revision,
        "peers": [
            {"public_key": session["public_key"], "last_handshake": world.clock().timestamp()}
        ],
        "elements": [
            {
                "session_id": session["id"],
                "device_ip": grant["device_ip"],
                "proto": grant["proto"],
                "ports": grant["ports"],
                "packets": 12,
                "bytes": sent_bytes,
            }
        ],
    }
    parsed = AgentReport.from_dict(report)
    world.app.state.broker.run(lambda uow: record_report(uow, agent, parsed))


@pytest.fixture
def context(browser: Browser, world: World) -> Iterator[BrowserContext]:
    made = browser.new_context(
        viewport=DESKTOP,
        base_url=world.base_url,
        accept_downloads=True,
        locale="en-GB",
        timezone_id=VIEWER_ZONE,
    )
    made.set_default_timeout(10_000)
    problems: list[str] = []
    made.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    made.on("weberror", lambda e: problems.append(str(e.error)))
    try:
        yield made
    finally:
        made.close()
    # Script errors and Content-Security-Policy refusals show up here.
    unexpected = [p for p in problems if "status of 4" not in p]
    assert not unexpected, unexpected


def sign_in(page: Page, world: World, who: Person) -> None:
    page.goto("/web/login")
    page.get_by_label("Email").fill(who.email)
    page.get_by_label("Password").fill(PASSWORD)
    if who.totp_secret:
        page.get_by_label("Code from your authenticator app").fill(world.totp(who))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/web/login" not in url)


def shoot(page: Page, directory: Path, name: str) -> None:
    """Desktop and phone views of the page as it is now; on a phone nothing may stick out
    sideways (wide tables and config text scroll inside their own box)."""
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=directory / f"{name}-desktop.png", full_page=True)
    page.set_viewport_size(PHONE)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name}: page is {width}px wide on a phone"
    page.screenshot(path=directory / f"{name}-phone.png", full_page=True)
    page.set_viewport_size(DESKTOP)
