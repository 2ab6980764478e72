"""The agent's broker client, state directory and renewal policy, against in-process fakes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import enroll as agent_enroll
from agent.broker_client import (
    BrokerClient,
    BrokerError,
    CertificateRejected,
    PinMismatch,
    backoff_delay,
    fetch_pinned_ca,
    pinned_ssl_context,
)
from agent.state_dir import AgentConfig, CertificateValidity, StateDir, StateError
from broker import enroll_token, pki
from netpolicy import DesiredState, HomeNetwork, PolicyError

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
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> BrokerClient:
    return BrokerClient(URL, pinned_ssl_context(CA.certificate_pem), httpx.MockTransport(handler))


# --- fetch_state / report ----------------------------------------------------------------


def test_fetch_state_200_204_and_query() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.params["after"] == "5":
            return httpx.Response(204)
        return httpx.Response(200, json=DESIRED.to_dict())

    with client(handler) as broker:
        assert broker.fetch_state(after=0, wait=25) == DESIRED
        assert broker.fetch_state(after=5, wait=999) is None
    assert [r.url.path for r in requests] == ["/v1/agent/state"] * 2
    assert dict(requests[0].url.params) == {"after": "0", "wait": "25"}
    assert requests[1].url.params["wait"] == "60"  # clamped
    assert requests[0].extensions["timeout"]["read"] == 35.0  # wait + slack


def test_errors_are_one_readable_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status = int(request.url.params["after"])
        return httpx.Response(status, json={"detail": "agent certificate required"})

    with client(handler) as broker:
        with pytest.raises(CertificateRejected, match=r"401.*agent certificate required") as e401:
            broker.fetch_state(after=401, wait=0)
        assert e401.value.status == 401
        with pytest.raises(BrokerError, match="500") as e500:
            broker.fetch_state(after=500, wait=0)
        assert not isinstance(e500.value, CertificateRejected)


def test_bad_documents_are_refused() -> None:
    with (
        client(lambda r: httpx.Response(200, text="<html>")) as broker,
        pytest.raises(BrokerError, match="non-JSON"),
    ):
        broker.fetch_state(after=0, wait=0)
    bad = DESIRED.to_dict() | {"revision": -1}
    with (
        client(lambda r: httpx.Response(200, json=bad)) as broker,
        pytest.raises(PolicyError, match="revision"),
    ):
        broker.fetch_state(after=0, wait=0)


def test_unreachable_broker() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client(handler) as broker, pytest.raises(BrokerError, match="cannot reach"):
        broker.report({"revision": 1})


def test_report_posts_json() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(204)

    payload = {"revision": 5, "peers": [], "elements": [], "neighbours": []}
    with client(handler) as broker:
        broker.report(payload)
    assert bodies == [("POST", "/v1/agent/report", payload)]


# --- backoff -----------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_and_capped() -> None:
    assert backoff_delay(0, lambda: 0.0) == 0.5
    assert backoff_delay(0, lambda: 1.0) == 1.0
    assert backoff_delay(3, lambda: 0.0) == 4.0
    assert backoff_delay(3, lambda: 1.0) == 8.0
    assert backoff_delay(100, lambda: 1.0) == 60.0
    assert backoff_delay(100, lambda: 0.0) == 30.0
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
    with pytest.raises(BrokerError, match="exactly one"):
        fetch_pinned_ca(URL, CA.fingerprint, serve("nope"))
    with pytest.raises(BrokerError, match="no PEM"):
        fetch_pinned_ca(URL, CA.fingerprint, serve("-----BEGIN CERTIFICATE-----\nAAAA"))
    # A second certificate glued on cannot ride along with the pinned one.
    with pytest.raises(BrokerError, match="exactly one"):
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
    with pytest.raises((agent_enroll.EnrollmentError, BrokerError), match=message):
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
