"""Real TLS on 127.0.0.1: uvicorn via broker.tls_server, the agent's pinning and mTLS client.

A tiny FastAPI app stands in for the broker routes (enroll, renew, state, report) and is
wired the way the real broker should be: ``peer_agent`` per request, token hashes
checked with ``broker.enroll_token``, certificates from ``broker.pki``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, HTTPException, Request, Response

from agent.broker_link.cert_client import BrokerLinkError, PinMismatch, pinned_ssl_context
from agent.broker_link.enroll import enroll, new_tls_key_and_csr, renew_if_due
from agent.broker_link.http_lite import BrokerLink, CertificateRejected
from agent.state_dir import StateDir
from broker import enroll_token, pki
from broker.tls_server import https_config, peer_agent, peer_certificate
from netpolicy import AgentReport, DesiredState, HomeNetwork

HOME = "home_1"
DESIRED = DesiredState(
    home_id=HOME,
    revision=3,
    network=HomeNetwork(
        IPv4Network("192.168.1.0/24"), IPv4Address("192.168.1.1"), IPv4Network("100.96.0.0/24")
    ),
)


@dataclass
class FakeBroker:
    """What the real broker keeps in its database, reduced to dicts."""

    ca: pki.CertificateAuthority
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  # token_hash -> row
    serials: set[str] = field(default_factory=set)  # issued, not revoked
    reports: list[dict[str, Any]] = field(default_factory=list)
    seen: list[Any] = field(default_factory=list)

    def mint_token(self, fingerprint: str | None = None) -> str:
        minted = enroll_token.mint(fingerprint or self.ca.fingerprint, datetime.now(UTC))
        self.tokens[minted.token_hash] = {"expires_at": minted.expires_at, "used_at": None}
        return minted.token

    def agent(self, request: Request) -> pki.AgentIdentity:
        identity = peer_agent(request, datetime.now(UTC))
        if identity is None or identity.serial not in self.serials:
            raise HTTPException(401, "agent certificate required")
        return identity

    def sign(self, csr_pem: str, agent_id: str) -> str:
        cert = pki.sign_agent_csr(self.ca, csr_pem, HOME, agent_id, datetime.now(UTC))
        self.serials.add(pki.serial_hex(cert))
        return pki.certificate_pem(cert)


def make_app(broker: FakeBroker) -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        cert = peer_certificate(request)
        identity = peer_agent(request, datetime.now(UTC))
        broker.seen.append(identity)
        return {"cert": cert is not None, "identity": list(identity) if identity else None}

    @app.get("/v1/agent/ca")
    def ca() -> dict[str, str]:
        return {"ca_pem": broker.ca.certificate_pem}

    @app.post("/v1/agent/enroll")
    def enroll_route(body: dict[str, Any]) -> dict[str, str]:
        now = datetime.now(UTC)
        try:
            row = broker.tokens.get(enroll_token.token_hash(body["token"]))
            if row is None:
                raise HTTPException(401, "unknown enrollment token")
            enroll_token.check_redeemable(row["expires_at"], row["used_at"], now)
            certificate_pem = broker.sign(body["csr_pem"], f"agt_{secrets.token_hex(4)}")
        except (enroll_token.EnrollTokenError, pki.PKIError) as exc:
            raise HTTPException(400, str(exc)) from None
        row["used_at"] = now
        return {
            "certificate_pem": certificate_pem,
            "ca_pem": broker.ca.certificate_pem,
            "home_id": HOME,
        }

    @app.post("/v1/agent/renew")
    def renew_route(body: dict[str, Any], request: Request) -> dict[str, str]:
        identity = broker.agent(request)
        return {"certificate_pem": broker.sign(body["csr_pem"], identity.agent_id)}

    @app.get("/v1/agent/state", response_model=None)
    def state(request: Request, after: int, wait: int = 0) -> Response | dict[str, Any]:
        broker.agent(request)
        return DESIRED.to_dict() if DESIRED.revision > after else Response(status_code=204)

    @app.post("/v1/agent/report", status_code=204)
    def report(body: dict[str, Any], request: Request) -> None:
        broker.agent(request)
        broker.reports.append(body)

    return app


@dataclass
class Running:
    url: str
    broker: FakeBroker
    data_dir: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("broker-data")
    now = datetime.now(UTC)
    ca = pki.load_or_create_ca(data_dir, now)
    pki.ensure_server_certificate(data_dir, ca, ["127.0.0.1", "localhost"], now)
    broker = FakeBroker(ca)
    config = https_config(make_app(broker), data_dir, "127.0.0.1", 0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mtls-test-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn died while starting"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Running(f"https://127.0.0.1:{port}", broker, data_dir)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop within 10 s"


def client_pem(
    tmp_path: Path,
    ca: pki.CertificateAuthority,
    agent_id: str,
    now: datetime,
    broker: FakeBroker | None = None,
) -> Path:
    """An agent cert+key file signed by ``ca`` (registered with ``broker`` if given)."""
    key, csr = new_tls_key_and_csr(agent_id)
    cert = pki.sign_agent_csr(ca, csr, HOME, agent_id, now)
    if broker is not None:
        broker.serials.add(pki.serial_hex(cert))
    path = tmp_path / f"{agent_id}.pem"
    path.write_text(pki.certificate_pem(cert) + _key_pem(key))
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def whoami(running: Running, pem: Path | None) -> dict[str, Any]:
    context = pinned_ssl_context(running.broker.ca.certificate_pem, pem)
    with httpx.Client(verify=context, timeout=5) as http:
        data: dict[str, Any] = http.get(f"{running.url}/whoami").json()
        return data


def test_ca_signed_client_certificate_is_seen(running: Running, tmp_path: Path) -> None:
    pem = client_pem(tmp_path, running.broker.ca, "agt_a", datetime.now(UTC))
    answer = whoami(running, pem)
    assert answer["cert"] is True
    home, agent, serial = answer["identity"]
    assert (home, agent) == (HOME, "agt_a") and len(serial) > 16


def test_no_client_certificate_is_served_without_identity(running: Running) -> None:
    assert whoami(running, None) == {"cert": False, "identity": None}


def test_forged_client_certificate_is_refused(running: Running, tmp_path: Path) -> None:
    forger = pki.create_ca(datetime.now(UTC))  # same subject name, different key
    assert forger.certificate.subject == running.broker.ca.certificate.subject
    pem = client_pem(tmp_path, forger, "agt_a", datetime.now(UTC))
    seen_before = len(running.broker.seen)
    with pytest.raises(httpx.TransportError):
        whoami(running, pem)
    assert len(running.broker.seen) == seen_before  # the app never ran


def test_expired_client_certificate_is_refused(running: Running, tmp_path: Path) -> None:
    pem = client_pem(tmp_path, running.broker.ca, "agt_old", datetime.now(UTC) - timedelta(days=2))
    seen_before = len(running.broker.seen)
    with pytest.raises(httpx.TransportError):
        whoami(running, pem)
    assert len(running.broker.seen) == seen_before


def test_enrollment_refuses_a_broker_whose_ca_is_not_pinned(
    running: Running, tmp_path: Path
) -> None:
    other_fp = pki.create_ca(datetime.now(UTC)).fingerprint
    token = running.broker.mint_token(fingerprint=other_fp)
    state_dir = tmp_path / "agent"
    with pytest.raises(PinMismatch, match="does not match"):
        enroll(running.url, token, state_dir, "ztb0", 51820, "203.0.113.10:51820")
    assert not state_dir.exists()  # nothing written, token not spent
    assert all(row["used_at"] is None for row in running.broker.tokens.values())


def test_pinned_client_refuses_a_server_from_another_ca(running: Running) -> None:
    other = pki.create_ca(datetime.now(UTC))
    with (
        BrokerLink.over_https(running.url, pinned_ssl_context(other.certificate_pem)) as client,
        pytest.raises(BrokerLinkError, match=r"cannot reach.*CERTIFICATE_VERIFY_FAILED"),
    ):
        client.fetch_state(after=0, wait=0)


def test_enroll_fetch_report_renew_over_real_tls(running: Running, tmp_path: Path) -> None:
    token = running.broker.mint_token()
    state_dir = tmp_path / "agent"
    config = enroll(running.url, token, state_dir, "ztb0", 51820, "203.0.113.10:51820")
    assert config.home_id == HOME and config.agent_id.startswith("agt_")
    state = StateDir(state_dir)
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert state.wg_key_path.stat().st_mode & 0o777 == 0o600
    assert state.client_pem_path.stat().st_mode & 0o777 == 0o600
    assert state.read_ca_pem() == running.broker.ca.certificate_pem
    assert len(state.read_wg_private_key()) == 44
    first = state.read_validity()

    # The daemon's stdlib client: the long-poll and reports share one keep-alive connection.
    with BrokerLink.from_state_dir(state) as client:
        assert client.fetch_state(after=0, wait=0) == DESIRED
        assert client.fetch_state(after=DESIRED.revision, wait=0) is None
        client.report(AgentReport(DESIRED.revision))
        assert client.fetch_state(after=0, wait=0) == DESIRED
    assert running.broker.reports[-1]["revision"] == DESIRED.revision

    # The token was one-time.
    with pytest.raises(BrokerLinkError, match="already used"):
        enroll(running.url, token, tmp_path / "again", "ztb0", 51820, "203.0.113.10:51820")

    not_due = renew_if_due(state_dir, datetime.now(UTC))
    assert not not_due.renewed and not_due.next_attempt == first.renew_at
    result = renew_if_due(state_dir, first.not_before + timedelta(hours=17))
    assert result.renewed and result.failures == 0, result.error
    second = state.read_validity()
    assert second.serial != first.serial
    with BrokerLink.from_state_dir(state) as client:
        assert client.fetch_state(after=0, wait=0) == DESIRED

        # Revocation is the caller's check on every request: the broker forgets the serial.
        running.broker.serials.discard(second.serial)
        with pytest.raises(CertificateRejected, match=r"401.*agent certificate required"):
            client.fetch_state(after=0, wait=0)
        with pytest.raises(CertificateRejected, match="401"):
            client.report(AgentReport(DESIRED.revision))
