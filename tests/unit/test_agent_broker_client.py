"""The agent's broker clients, state directory and renewal policy, against in-process fakes.

The daemon's stdlib client runs against a fake transport and its keep-alive transport
against a real HTTP server on 127.0.0.1; real TLS is in ``test_mtls``.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from agent.broker_link import enroll as agent_enroll
from agent.broker_link.cert_client import BrokerLinkError, PinMismatch, fetch_pinned_ca
from agent.broker_link.http_lite import BrokerLink, CertificateRejected, KeepAliveTransport, Reply
from agent.broker_link.source import backoff_delay
from agent.state_dir import AgentConfig, CertificateValidity, StateDir, StateError
from broker import enroll_token, pki
from netpolicy import AgentReport, DesiredState, HomeNetwork, PolicyError

URL = "https://198.51.100.2:8443"
NOW = datetime.now(UTC)
CA = pki.create_ca(NOW)
DESIRED = DesiredState(
    home_id="home_1",
    revision=5,
    network=HomeNetwork(
        IPv4Network("192.168.1.0/24"), IPv4Address("192.168.1.1"), IPv4Network("100.96.0.0/24")
    ),
)


@dataclass(frozen=True)
class Sent:
    """One request as the broker would see it (JSON body decoded)."""

    method: str
    path: str
    params: dict[str, str]
    body: Any
    timeout: float


Handler = Callable[[Sent], Reply]


@dataclass
class FakeTransport:
    """Stands in for ``KeepAliveTransport``: hands each request to ``handler``."""

    handler: Handler
    sent: list[Sent] = field(default_factory=list)
    closed: bool = False

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> Reply:
        url = urlsplit(path)
        decoded = None if body is None else json.loads(body)
        sent = Sent(method, url.path, dict(parse_qsl(url.query)), decoded, timeout)
        self.sent.append(sent)
        return self.handler(sent)

    def close(self) -> None:
        self.closed = True


def reply(status: int, data: Any = None, text: str = "") -> Reply:
    body = text.encode() if data is None else json.dumps(data).encode()
    return Reply(status, http.client.responses.get(status, ""), body)


def daemon_client(handler: Handler, prefix: str = "") -> tuple[BrokerLink, FakeTransport]:
    transport = FakeTransport(handler)
    return BrokerLink(transport, prefix), transport


# --- fetch_state / report ----------------------------------------------------------------


def test_fetch_state_200_204_and_query() -> None:
    def handler(sent: Sent) -> Reply:
        return reply(204) if sent.params["after"] == "5" else reply(200, DESIRED.to_dict())

    broker, transport = daemon_client(handler, prefix="/ztb/")
    with broker:
        assert broker.fetch_state(after=0, wait=25) == DESIRED
        assert broker.fetch_state(after=5, wait=999) is None
    assert transport.closed
    assert [(s.method, s.path) for s in transport.sent] == [("GET", "/ztb/v1/agent/state")] * 2
    assert transport.sent[0].params == {"after": "0", "wait": "25"}
    assert transport.sent[1].params["wait"] == "60"  # clamped
    assert [s.timeout for s in transport.sent] == [35.0, 70.0]  # wait + slack


def test_errors_are_one_readable_line() -> None:
    def handler(sent: Sent) -> Reply:
        status = int(sent.params["after"])
        if status == 502:
            return reply(status, text="<html>bad gateway</html>")
        return reply(status, {"detail": "agent certificate required"})

    broker, _ = daemon_client(handler)
    with pytest.raises(CertificateRejected, match=r"401.*agent certificate required") as e401:
        broker.fetch_state(after=401, wait=0)
    assert e401.value.status == 401
    with pytest.raises(CertificateRejected) as e403:
        broker.fetch_state(after=403, wait=0)
    assert e403.value.status == 403
    for status in (500, 503, 404):
        with pytest.raises(BrokerLinkError, match=f"GET /v1/agent/state \\({status}\\)") as e:
            broker.fetch_state(after=status, wait=0)
        assert not isinstance(e.value, CertificateRejected) and e.value.status == status
    with pytest.raises(BrokerLinkError, match="bad gateway"):
        broker.fetch_state(after=502, wait=0)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (reply(200, text="<html>"), "non-JSON for /v1/agent/state"),
        (Reply(200, "OK", b"\x80{}"), "non-JSON"),
        (reply(200, [1, 2]), "non-object"),
    ],
)
def test_bad_documents_are_refused(answer: Reply, message: str) -> None:
    broker, _ = daemon_client(lambda sent: answer)
    with pytest.raises(BrokerLinkError, match=message):
        broker.fetch_state(after=0, wait=0)


def test_invalid_document_is_a_policy_error() -> None:
    broker, _ = daemon_client(lambda sent: reply(200, DESIRED.to_dict() | {"revision": -1}))
    with pytest.raises(PolicyError, match="revision"):
        broker.fetch_state(after=0, wait=0)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "connection refused"),
        http.client.RemoteDisconnected("Remote end closed connection without response"),
        ssl.SSLCertVerificationError("certificate verify failed"),
        TimeoutError(),
    ],
)
def test_unreachable_broker(error: Exception) -> None:
    def handler(sent: Sent) -> Reply:
        raise error

    broker, _ = daemon_client(handler)
    with pytest.raises(BrokerLinkError, match="cannot reach the broker for POST /v1/agent/report"):
        broker.report(AgentReport(1))
    with pytest.raises(BrokerLinkError, match=r"cannot reach.*GET /v1/agent/state: .+") as e:
        broker.fetch_state(after=1, wait=0)
    assert e.value.status is None and "?" not in str(e.value)


def test_report_posts_json() -> None:
    broker, transport = daemon_client(lambda sent: reply(204))
    broker.report(AgentReport(5))
    payload = {"version": 1, "revision": 5, "peers": [], "elements": []}
    assert [(s.method, s.path, s.body, s.timeout) for s in transport.sent] == [
        ("POST", "/v1/agent/report", payload, 10.0)
    ]


# --- the keep-alive transport against a real HTTP server on 127.0.0.1 --------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/ok`` answers and keeps the connection; ``/drop`` answers and then hangs up
    without saying so (as a broker does with an idle keep-alive connection); ``/big/N``
    sends N bytes; ``/slow`` answers after 0.5 s."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, int]]

    def do_GET(self) -> None:
        self.seen.append((self.path, self.client_address[1]))
        if self.path == "/slow":
            time.sleep(0.5)
        size = int(self.path.removeprefix("/big/")) if self.path.startswith("/big/") else 2
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"x" * size)
        self.close_connection = self.path == "/drop"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((f"POST {self.path} {body.decode()}", self.client_address[1]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class LocalServer:
    port: int
    seen: list[tuple[str, int]]

    def transport(self, max_body: int = 100) -> KeepAliveTransport:
        return KeepAliveTransport(
            lambda: http.client.HTTPConnection("127.0.0.1", self.port), max_body
        )

    def connections(self) -> int:
        return len({port for _, port in self.seen})


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    seen: list[tuple[str, int]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="keepalive-test", daemon=True)
    thread.start()
    try:
        yield LocalServer(server.server_address[1], seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_keep_alive_reuses_one_connection(local_server: LocalServer) -> None:
    transport = local_server.transport()
    assert transport.request("GET", "/ok", None, 5) == Reply(200, "OK", b"xx")
    assert transport.request("POST", "/r", b'{"a":1}', 5).status == 204
    assert transport.request("GET", "/ok", None, 5).body == b"xx"
    transport.close()
    assert [path for path, _ in local_server.seen] == ["/ok", 'POST /r {"a":1}', "/ok"]
    assert local_server.connections() == 1


def test_connection_closed_while_idle_is_replaced(local_server: LocalServer) -> None:
    transport = local_server.transport()
    transport.request("GET", "/drop", None, 5)
    time.sleep(0.05)  # the server has hung up by now
    assert transport.request("GET", "/ok", None, 5).body == b"xx"
    assert transport.request("GET", "/ok", None, 5).body == b"xx"
    transport.close()
    assert local_server.connections() == 2


def test_answers_are_bounded(local_server: LocalServer) -> None:
    transport = local_server.transport(max_body=100)
    assert len(transport.request("GET", "/big/100", None, 5).body) == 100
    with pytest.raises(BrokerLinkError, match="exceeds 100 bytes"):
        transport.request("GET", "/big/101", None, 5)
    transport.request("GET", "/ok", None, 5)  # on a fresh connection
    transport.close()
    assert local_server.connections() == 2


def test_a_timeout_is_not_retried(local_server: LocalServer) -> None:
    transport = local_server.transport()
    transport.request("GET", "/ok", None, 5)  # the slow request reuses this connection
    with pytest.raises(TimeoutError):
        transport.request("GET", "/slow", None, 0.2)
    assert [path for path, _ in local_server.seen] == ["/ok", "/slow"]
    assert transport.request("GET", "/ok", None, 5).body == b"xx"
    transport.close()


def test_unreachable_port_is_a_broker_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        transport = KeepAliveTransport(lambda: http.client.HTTPConnection("127.0.0.1", port))
        with pytest.raises(BrokerLinkError, match=r"cannot reach.*refused"):
            BrokerLink(transport).report(AgentReport(1))


# --- backoff -----------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_and_capped() -> None:
    assert backoff_delay(0, lambda: 0.0) == 0.5
    assert backoff_delay(0, lambda: 1.0) == 1.0
    assert backoff_delay(3, lambda: 0.0) == 4.0
    assert backoff_delay(3, lambda: 1.0) == 8.0
    assert backoff_delay(100, lambda: 1.0) == 10.0
    assert backoff_delay(100, lambda: 0.0) == 5.0
    assert backoff_delay(-5, lambda: 1.0) == 1.0
    ceilings = [backoff_delay(n, lambda: 1.0) for n in range(10)]
    assert ceilings == sorted(ceilings)
    assert 0.5 <= backoff_delay(2) * 0.25 <= 1.0


# --- pinning -----------------------------------------------------------------------------


def test_fetch_pinned_ca_accepts_only_the_pinned_fingerprint() -> None:
    def serve(ca_pem: str) -> httpx.MockTransport:
        return httpx.MockTransport(lambda r: httpx.Response(200, json={"ca_pem": ca_pem}))

    got = fetch_pinned_ca(URL, CA.fingerprint.upper(), serve(CA.certificate_pem))
    assert got == CA.certificate_pem
    other = pki.create_ca(NOW)
    with pytest.raises(PinMismatch, match=other.fingerprint):
        fetch_pinned_ca(URL, CA.fingerprint, serve(other.certificate_pem))
    with pytest.raises(BrokerLinkError, match="exactly one"):
        fetch_pinned_ca(URL, CA.fingerprint, serve("nope"))
    with pytest.raises(BrokerLinkError, match="no PEM"):
        fetch_pinned_ca(URL, CA.fingerprint, serve("-----BEGIN CERTIFICATE-----\nAAAA"))
    # A second certificate glued on cannot ride along with the pinned one.
    with pytest.raises(BrokerLinkError, match="exactly one"):
        fetch_pinned_ca(URL, CA.fingerprint, serve(CA.certificate_pem + other.certificate_pem))


# --- enrollment against an in-process fake broker ---------------------------------------


def fake_broker(
    tamper: Callable[[dict[str, Any]], None] = lambda answer: None,
) -> tuple[str, httpx.MockTransport, list[dict[str, Any]]]:
    minted = enroll_token.mint(CA.fingerprint, NOW)
    enrolled: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/agent/ca":
            return httpx.Response(200, json={"ca_pem": CA.certificate_pem})
        body = json.loads(request.content)
        if request.url.path == "/v1/agent/enroll":
            assert enroll_token.verify(body["token"], minted.token_hash)
            enrolled.append(body)
            cert = pki.sign_agent_csr(CA, body["csr_pem"], "home_1", "agt_1", NOW)
            answer = {
                "certificate_pem": pki.certificate_pem(cert),
                "ca_pem": CA.certificate_pem,
                "home_id": "home_1",
            }
            tamper(answer)
            return httpx.Response(200, json=answer)
        if request.url.path == "/v1/agent/renew":
            cert = pki.sign_agent_csr(CA, body["csr_pem"], "home_1", "agt_1", NOW)
            return httpx.Response(200, json={"certificate_pem": pki.certificate_pem(cert)})
        return httpx.Response(404, json={"detail": "not found"})

    return minted.token, httpx.MockTransport(handler), enrolled


def test_enroll_writes_the_state_dir(tmp_path: Path) -> None:
    token, transport, enrolled = fake_broker()
    config = agent_enroll.enroll(
        URL, token, tmp_path / "s", "ztb0", 51820, "203.0.113.1:51820", transport
    )
    assert config == AgentConfig(URL, "home_1", "agt_1", "ztb0", 51820, "203.0.113.1:51820")
    state = StateDir(tmp_path / "s")
    assert state.read_config() == config
    assert enrolled[0]["interface"] == "ztb0" and enrolled[0]["listen_port"] == 51820
    assert len(enrolled[0]["wg_public_key"]) == 44
    assert enrolled[0]["wg_public_key"] != state.read_wg_private_key()
    validity = state.read_validity()
    assert validity.not_after - validity.not_before == timedelta(hours=24) + pki.BACKDATE
    pem = state.client_pem_path.read_text()
    assert "BEGIN CERTIFICATE" in pem and "BEGIN PRIVATE KEY" in pem
    with pytest.raises(StateError, match="already holds"):
        agent_enroll.enroll(
            URL, token, tmp_path / "s", "ztb0", 51820, "203.0.113.1:51820", transport
        )


OTHER_CA = pki.create_ca(NOW)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda a: a.update(ca_pem=OTHER_CA.certificate_pem), "CA other than the pinned"),
        (lambda a: a.update(home_id="home_2"), "not home home_2"),
        (lambda a: a.pop("certificate_pem"), "lacks certificate_pem"),
        (
            lambda a: a.update(
                certificate_pem=pki.certificate_pem(
                    pki.sign_agent_csr(
                        OTHER_CA, agent_enroll.new_tls_key_and_csr("x")[1], "home_1", "a", NOW
                    )
                )
            ),
            "unusable certificate|not signed by the pinned CA",
        ),
        (
            lambda a: a.update(
                certificate_pem=pki.certificate_pem(
                    pki.sign_agent_csr(
                        CA, agent_enroll.new_tls_key_and_csr("x")[1], "home_1", "a", NOW
                    )
                )
            ),
            "for another key",
        ),
    ],
)
def test_enroll_checks_the_answer_and_writes_nothing(
    tmp_path: Path, tamper: Callable[[dict[str, Any]], None], message: str
) -> None:
    token, transport, _ = fake_broker(tamper)
    with pytest.raises((agent_enroll.EnrollmentError, BrokerLinkError), match=message):
        agent_enroll.enroll(
            URL, token, tmp_path / "s", "ztb0", 51820, "203.0.113.1:51820", transport
        )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"broker_url": "http://198.51.100.2"}, "https"),
        ({"interface": "a-very-long-interface-name"}, "interface"),
        ({"listen_port": 0}, "listen port"),
        ({"endpoint": "203.0.113.1"}, "HOST:PORT"),
        ({"token": "ztbenroll.abc.def"}, "fingerprint must be 64"),
    ],
)
def test_enroll_validates_settings_before_spending_the_token(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    token, transport, enrolled = fake_broker()
    args: dict[str, Any] = {
        "broker_url": URL,
        "token": token,
        "interface": "ztb0",
        "listen_port": 51820,
        "endpoint": "203.0.113.1:51820",
    } | kwargs
    with pytest.raises(ValueError, match=message):
        agent_enroll.enroll(state_dir=tmp_path / "s", transport=transport, **args)
    assert enrolled == []


# --- renewal ------------------------------------------------------------------------------


def validity(hours: float = 24) -> CertificateValidity:
    return CertificateValidity("ab", NOW, NOW + timedelta(hours=hours))


def test_renewal_is_due_at_two_thirds_and_backs_off() -> None:
    v = validity()
    assert v.renew_at == NOW + timedelta(hours=16)
    assert agent_enroll.next_renewal_attempt(v, NOW, 0) == v.renew_at
    later = NOW + timedelta(hours=17)
    assert agent_enroll.next_renewal_attempt(v, later, 0) == later
    delays = [agent_enroll.next_renewal_attempt(v, later, n) - later for n in range(1, 10)]
    assert delays[:3] == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    assert max(delays) == timedelta(minutes=15)
    assert delays == sorted(delays)


def test_renewal_gets_louder_towards_expiry() -> None:
    v = validity()
    levels = [
        agent_enroll.renewal_log_level(v, NOW + timedelta(hours=h)) for h in (1, 17, 21, 24, 30)
    ]
    assert levels == [
        logging.DEBUG,
        logging.WARNING,
        logging.ERROR,
        logging.CRITICAL,
        logging.CRITICAL,
    ]


def test_renew_if_due(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token, transport, _ = fake_broker()
    agent_enroll.enroll(URL, token, tmp_path, "ztb0", 51820, "203.0.113.1:51820", transport)
    state = StateDir(tmp_path)
    first = state.read_validity()
    assert not agent_enroll.renewal_due(tmp_path, NOW)
    assert agent_enroll.renewal_due(tmp_path, first.renew_at)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "database is down"})

    late = first.not_after - timedelta(hours=1)
    with caplog.at_level(logging.WARNING):
        failed = agent_enroll.renew_if_due(tmp_path, late, 2, httpx.MockTransport(refuse))
    assert not failed.renewed and failed.failures == 3
    assert failed.next_attempt == late + timedelta(minutes=2)
    assert "database is down" in (failed.error or "")
    assert caplog.records[-1].levelno == logging.ERROR
    assert state.read_validity() == first  # nothing replaced on failure

    done = agent_enroll.renew_if_due(tmp_path, late, failed.failures, transport)
    assert done.renewed and done.failures == 0
    assert state.read_validity().serial != first.serial


# --- state directory ----------------------------------------------------------------------


def test_state_dir_refuses_unsafe_or_missing_files(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    with pytest.raises(StateError, match="no enrolled agent"):
        state.read_config()
    state.create()
    state.write_wg_private_key("k" * 43 + "=")
    assert state.wg_key_path.stat().st_mode & 0o777 == 0o600
    state.wg_key_path.chmod(0o644)
    with pytest.raises(StateError, match="chmod 600"):
        state.read_wg_private_key()
    with pytest.raises(StateError, match="missing"):
        state.check_client_pem()
    state.config_path.write_text("{}")
    with pytest.raises(StateError, match="incomplete"):
        state.read_config()
    state.config_path.write_text("{")
    with pytest.raises(StateError, match="not valid JSON"):
        state.read_config()
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(".")] == []


def test_validity_round_trip() -> None:
    v = validity()
    assert CertificateValidity.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(StateError, match="time zone"):
        CertificateValidity.from_dict(
            {"serial": "1", "not_before": "2026-01-01T00:00", "not_after": "2026-01-02T00:00"}
        )
