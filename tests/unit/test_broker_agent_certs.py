"""Agents and their certificates: enrollment, renewal, revocation, inventory (issue 4).

The broker app runs in-process; agents present real certificates from the broker's CA
through ``TlsTerminator`` (the TLS handshake is covered by test_mtls.py and the lab).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select
from typer.testing import CliRunner

from agent.broker_link.enroll import new_tls_key_and_csr
from broker import pki
from broker.cli.server import _tls_names
from broker.cli.server import app as server_app
from broker.db.models import AgentCertificate, AuditEvent, EnrollmentToken
from ztb.wgkeys import key_pair

from .broker_harness import AgentCert, Harness, anyio_backend, csr, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio
STATE = "/v1/agent/state?after=0&wait=0"


def enrollment(token: str, csr_pem: str) -> dict[str, object]:
    return {
        "token": token,
        "csr_pem": csr_pem,
        "wg_public_key": key_pair()[1],
        "interface": "ztb0",
        "listen_port": 51820,
        "endpoint": "203.0.113.10:51820",
    }


def actions(h: Harness) -> list[str]:
    with h.broker.sessionmaker() as db:
        return list(db.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


async def test_ca_is_public_and_pinned_by_enrollment_tokens(harness: Harness) -> None:
    h = harness
    w = await h.world()
    ca_pem = (await h.call("GET", "/v1/agent/ca")).json()["ca_pem"]
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    assert ca_pem == (h.data_dir / pki.CA_CERT_FILE).read_text()
    minted = await h.ok("POST", f"/v1/homes/{w.home_a}/enroll-token", w.admin, json={})
    assert minted["token"].split(".")[1] == pki.fingerprint(ca)


async def test_enrollment_issues_a_certificate_for_the_home(harness: Harness) -> None:
    h = harness
    w = await h.world()
    cert = x509.load_pem_x509_certificate(w.agent_a.certificate_pem.encode())
    identity = pki.agent_identity(cert)
    assert (identity.home_id, identity.agent_id) == (w.home_a, w.agent_a.agent_id)
    assert cert.not_valid_after_utc - h.clock() == timedelta(hours=24)
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    (agent,) = home["agents"]
    assert agent["cert_serial"] == identity.serial and not agent["revoked"]
    assert agent["cert_not_after"] == "2026-11-02T12:00:00Z"
    assert agent["last_seen_at"] is None
    await h.ok("GET", STATE, w.agent_a)
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    assert home["agents"][0]["last_seen_at"] == "2026-11-01T12:00:00Z"
    with h.broker.sessionmaker() as db:
        row = db.get(AgentCertificate, identity.serial)
        assert row is not None and row.first_seen_at is not None


async def test_a_bad_csr_does_not_burn_the_token(harness: Harness) -> None:
    h = harness
    w = await h.world()
    minted = await h.ok("POST", f"/v1/homes/{w.home_a}/enroll-token", w.admin, json={})
    bad = await h.call("POST", "/v1/agent/enroll", json=enrollment(minted["token"], "garbage"))
    assert bad.status_code == 400 and "certificate signing request" in bad.json()["detail"]
    with h.broker.sessionmaker() as db:
        row = db.scalars(select(EnrollmentToken).where(EnrollmentToken.home_id == w.home_a))
        assert all(t.used_at is None for t in row if t.id == minted["id"])
    good = await h.call("POST", "/v1/agent/enroll", json=enrollment(minted["token"], csr()))
    assert good.status_code == 201, good.text


async def test_a_replayed_token_is_refused_and_audited(harness: Harness) -> None:
    h = harness
    w = await h.world()
    minted = await h.ok("POST", f"/v1/homes/{w.home_a}/enroll-token", w.admin, json={})
    body = enrollment(minted["token"], csr())
    assert (await h.call("POST", "/v1/agent/enroll", json=body)).status_code == 201
    replay = await h.call("POST", "/v1/agent/enroll", json={**body, "csr_pem": csr()})
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    assert actions(h)[-1] == "denied"
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    assert len(home["agents"]) == 2  # world's agent + this one; the replay made none


async def test_no_certificate_or_unknown_certificate_gets_nothing(harness: Harness) -> None:
    h = harness
    w = await h.world()
    assert (await h.call("GET", STATE)).status_code == 401
    # Signed by the right CA for the right ids, but never issued (a stolen CA key would
    # allow it; an unknown serial is still refused).
    ca = h.broker.ca
    assert ca is not None
    unissued = pki.sign_agent_csr(ca, csr(), w.home_a, w.agent_a.agent_id, h.clock())
    stray = AgentCert(w.agent_a.agent_id, w.home_a, pki.certificate_pem(unissued))
    assert (await h.call("GET", STATE, stray)).status_code == 401
    # Agent A's id under home B's name: the identity must match the agents table.
    crossed = pki.sign_agent_csr(ca, csr(), w.home_b, w.agent_a.agent_id, h.clock())
    wrong_home = AgentCert(w.agent_a.agent_id, w.home_b, pki.certificate_pem(crossed))
    assert (await h.call("GET", STATE, wrong_home)).status_code == 401


async def test_an_expired_certificate_gets_nothing(harness: Harness) -> None:
    h = harness
    w = await h.world()
    assert (await h.call("GET", STATE, w.agent_a)).status_code == 200
    h.clock.advance(24 * 3600)
    response = await h.call("GET", STATE, w.agent_a)
    assert response.status_code == 401 and "certificate" in response.json()["detail"]


async def test_renewal_keeps_the_old_certificate_until_the_new_one_is_seen(
    harness: Harness,
) -> None:
    h = harness
    w = await h.world()
    old = w.agent_a
    h.clock.advance(17 * 3600)
    _, csr_pem = new_tls_key_and_csr("x")
    answer = await h.ok("POST", "/v1/agent/renew", old, json={"csr_pem": csr_pem})
    new = AgentCert(old.agent_id, old.home_id, answer["certificate_pem"])
    assert new.serial != old.serial
    assert (await h.call("GET", STATE, old)).status_code == 200  # answer may have been lost
    assert (await h.call("GET", STATE, new)).status_code == 200  # first seen: old retires
    assert (await h.call("GET", STATE, old)).status_code == 401
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    assert home["agents"][0]["cert_not_after"] == "2026-11-03T05:00:00Z"
    assert "agent.certificate_renewed" in actions(h)
    bad = await h.call("POST", "/v1/agent/renew", new, json={"csr_pem": "nope"})
    assert bad.status_code == 400
    assert (await h.call("GET", STATE, new)).status_code == 200


async def test_revocation_cuts_the_agent_off_at_once(harness: Harness) -> None:
    h = harness
    w = await h.world()
    waiting = asyncio.create_task(h.call("GET", "/v1/agent/state?after=1&wait=20", w.agent_a))
    await asyncio.sleep(0.2)
    revoked = await h.ok(
        "POST", f"/v1/homes/{w.home_a}/agents/{w.agent_a.agent_id}/revoke", w.admin
    )
    assert revoked["revoked"] is True
    in_flight = await asyncio.wait_for(waiting, 5)
    assert in_flight.status_code == 401  # the long-poll in progress ended too
    assert (await h.call("GET", STATE, w.agent_a)).status_code == 401
    report = {"revision": 1, "peers": [], "elements": []}
    assert (await h.call("POST", "/v1/agent/report", w.agent_a, json=report)).status_code == 401
    renew = await h.call("POST", "/v1/agent/renew", w.agent_a, json={"csr_pem": csr()})
    assert renew.status_code == 401
    assert (await h.call("GET", STATE, w.agent_b)).status_code == 200  # other home unaffected
    again = await h.call(
        "POST", f"/v1/homes/{w.home_a}/agents/{w.agent_a.agent_id}/revoke", w.admin
    )
    assert again.status_code == 409
    foreign = await h.call(
        "POST", f"/v1/homes/{w.home_b}/agents/{w.agent_a.agent_id}/revoke", w.admin
    )
    assert foreign.status_code == 404
    assert "agent.revoked" in actions(h)


async def test_revoking_the_newest_agent_hands_configs_back_to_the_one_still_running(
    harness: Harness,
) -> None:
    h = harness
    w = await h.world()
    spare = await h.enroll(w.admin, w.home_a, "203.0.113.99:51820")
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    keys = {a["id"]: a["wg_public_key"] for a in home["agents"]}
    assert home["agent_public_key"] == keys[spare.agent_id]  # the newest enrollment wins
    await h.ok("POST", f"/v1/homes/{w.home_a}/agents/{spare.agent_id}/revoke", w.admin)
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    assert home["agent_public_key"] == keys[w.agent_a.agent_id]
    assert home["endpoint"] == "203.0.113.10:51820"
    await h.ok("POST", f"/v1/homes/{w.home_a}/agents/{w.agent_a.agent_id}/revoke", w.admin)
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.admin)
    assert home["agent_public_key"] is None  # no running router: no config can be made


def test_bootstrap_writes_the_ca_and_a_certificate_for_the_tls_names(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ["bootstrap", "--data-dir", str(data_dir), "--tls-name", "198.51.100.2", "--json"]
    result = CliRunner().invoke(server_app, [*args, "--tls-name", "broker.example.net"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ca_cert"] == str(data_dir / pki.CA_CERT_FILE)
    assert (data_dir / pki.CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    ca = pki.load_ca(data_dir)
    server = x509.load_pem_x509_certificate((data_dir / pki.SERVER_CERT_FILE).read_bytes())
    server.verify_directly_issued_by(ca.certificate)
    names = ("broker.example.net", "198.51.100.2")
    assert set(_tls_names(None, "0.0.0.0", data_dir)) == set(names)  # serve keeps them
    assert _tls_names(["a.example"], "0.0.0.0", data_dir) == ("a.example",)
    assert _tls_names(None, "0.0.0.0", tmp_path) == ("localhost", "127.0.0.1")
    assert _tls_names(None, "10.1.2.3", tmp_path) == ("localhost", "127.0.0.1", "10.1.2.3")
