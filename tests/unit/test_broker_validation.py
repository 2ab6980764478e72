"""Bad input answers 4xx with a readable reason, and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from broker.db.models import AccessSession, AuditEvent, Device, Home
from ztb.wgkeys import key_pair

from .broker_harness import Harness, anyio_backend, enroll_body, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio


def counts(h: Harness) -> tuple[int, ...]:
    """Rows that a refused request must not have touched (denials may add audit events)."""
    with h.broker.sessionmaker() as db:
        return tuple(
            db.scalar(select(func.count()).select_from(table)) or 0
            for table in (Home, Device, AccessSession)
        )


def snapshot(h: Harness) -> list[tuple[Any, ...]]:
    with h.broker.sessionmaker() as db:
        rows = db.execute(select(AccessSession.id, AccessSession.state, AccessSession.grants))
        homes = db.execute(select(Home.id, Home.revision, Home.policy))
        return [tuple(r) for r in rows] + [tuple(r) for r in homes]


HOME_CASES = [
    ({"lan": "0.0.0.0/0"}, "private"),
    ({"lan": "8.8.8.0/24"}, "private"),
    ({"lan": "192.168.5.1/24"}, "CIDR"),
    ({"lan": "192.168.5.0/31"}, "too small"),
    ({"lan": "192.168.5.0/24", "router_ip": "192.168.6.1"}, "not inside"),
    ({"lan": "192.168.5.0/24", "router_ip": "192.168.5.255"}, "broadcast"),
    ({"lan": "192.168.5.0/24", "router_ip": "192.168.5.0"}, "network"),
    ({"lan": "192.168.5.0/24", "tunnel_pool": "192.168.5.0/24"}, "overlaps"),
    ({"lan": "192.168.5.0/24", "tunnel_pool": "0.0.0.0/0"}, "tunnel pool"),
    ({"lan": "192.168.5.0/24", "tunnel_pool": "100.96.1.0/24"}, "used by another"),
    ({"lan": "192.168.5.0/24", "endpoint": "203.0.113.1:0"}, "port"),
    ({"lan": "192.168.5.0/24", "endpoint": "203.0.113.1"}, "HOST:PORT"),
    ({"lan": "192.168.5.0/24", "owner": "tina@example.com"}, "not a homeowner"),
    ({"lan": "192.168.5.0/24", "name": "ann-house"}, "already exists"),
    ({"lan": "192.168.5.0/24", "name": "bad name!"}, "name"),
    ({"lan": "192.168.5.0/24", "surprise": 1}, "surprise"),
    ({"lan": "192.168.5.0/24", "webhook_url": "ftp://x"}, "webhook_url"),
]


@pytest.mark.parametrize(("override", "reason"), HOME_CASES)
async def test_bad_homes_are_refused(
    harness: Harness, override: dict[str, Any], reason: str
) -> None:
    h = harness
    w = await h.world()
    before = counts(h)
    body = {"name": "new-home", "owner": "ann@example.com", **override}
    response = await h.call("POST", "/v1/homes", w.admin, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert reason.lower() in response.json()["detail"].lower()
    assert counts(h) == before


DEVICE_CASES = [
    ({"ip": "192.168.1.1"}, "router"),
    ({"ip": "192.168.1.255"}, "broadcast"),
    ({"ip": "192.168.1.0"}, "network address"),
    ({"ip": "10.20.0.5"}, "not inside"),
    ({"ip": "0.0.0.0"}, "not inside"),
    ({"ip": "192.168.1.020"}, "not an IP"),
    ({"ip": "192.168.1.20"}, "already"),
    ({"name": "tv"}, "already"),
    ({"name": "-x"}, "name"),
    ({"mac": "zz:zz"}, "MAC"),
]


@pytest.mark.parametrize(("override", "reason"), DEVICE_CASES)
async def test_bad_devices_are_refused(
    harness: Harness, override: dict[str, Any], reason: str
) -> None:
    h = harness
    w = await h.world()
    before = counts(h)
    body = {"name": "lamp", "ip": "192.168.1.50", **override}
    response = await h.call("POST", f"/v1/homes/{w.home_a}/devices", w.owner_a, json=body)
    assert 400 <= response.status_code < 500
    assert reason.lower() in response.json()["detail"].lower(), response.text
    assert counts(h) == before


REQUEST_CASES = [
    ({"grants": ["thermostat:tcp/0"]}, "port"),
    ({"grants": ["thermostat:tcp/65536"]}, "port"),
    ({"grants": ["thermostat:tcp/90-80"]}, "reversed"),
    ({"grants": ["thermostat:icmp/1"]}, "protocol"),
    ({"grants": ["fridge:tcp/443"]}, "unknown device"),
    ({"grants": ["camera:tcp/443"]}, "unknown device"),  # another home's device
    ({"grants": []}, "grants"),
    ({"grants": ["192.168.1.1:tcp/22"]}, "unknown device"),
    ({"duration_s": 0}, "longer than zero"),
    ({"duration_s": -60}, "longer than zero"),
    ({"duration_s": 3601}, "cap"),
    ({"duration_s": 8 * 3600 + 1}, "cap"),
    ({"duration_s": "1h"}, "duration_s"),
    ({"public_key": "not-a-key"}, "key"),
    ({"public_key": "A" * 42 + "=="}, "key"),  # base64, but 31 bytes
    ({"public_key": "A" * 43 + "="}, "low-order"),  # all zeros: no key pair has it
    ({"reason": ""}, "reason"),
    ({"home": "bert-flat"}, "not found"),
    ({"home": "nowhere"}, "not found"),
]


@pytest.mark.parametrize(("override", "reason"), REQUEST_CASES)
async def test_bad_requests_are_refused(
    harness: Harness, override: dict[str, Any], reason: str
) -> None:
    h = harness
    w = await h.world()
    await h.ok("PUT", f"/v1/homes/{w.home_b}/policy", w.owner_b, json={"technicians": ["x@y"]})
    before = snapshot(h)
    body = {"home": "ann-house", "grants": ["thermostat:tcp/443"], "duration_s": 60, "reason": "r"}
    response = await h.call("POST", "/v1/sessions", w.tech_a, json={**body, **override})
    assert 400 <= response.status_code < 500
    assert reason.lower() in response.json()["detail"].lower(), response.text
    assert snapshot(h) == before


async def test_public_key_that_is_valid_base64_but_short_is_refused(harness: Harness) -> None:
    h = harness
    w = await h.world()
    short = "AAAA" * 10 + "AA=="  # 44 characters of base64 that decode to 31 bytes
    response = await h.call(
        "POST",
        "/v1/sessions",
        w.tech_a,
        json={
            "home": "ann-house",
            "grants": ["tv:tcp/1"],
            "duration_s": 60,
            "reason": "r",
            "public_key": short,
        },
    )
    assert response.status_code == 422


async def test_bad_decisions_are_refused_and_change_nothing(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], 600))["id"]
    longer = await h.call(
        "POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={"duration_s": 601}
    )
    assert longer.status_code == 422 and "shorten" in longer.json()["detail"]
    zero = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={"duration_s": 0})
    assert zero.status_code == 422
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    before = snapshot(h)
    twice = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    assert twice.status_code == 409 and "already approved" in twice.json()["detail"]
    cancel = await h.call("POST", f"/v1/sessions/{sid}/cancel", w.tech_a)
    assert cancel.status_code == 409
    deny = await h.call("POST", f"/v1/sessions/{sid}/deny", w.owner_a)
    assert deny.status_code == 409
    more = await h.call(
        "POST", f"/v1/sessions/{sid}/grants", w.tech_a, json={"grants": ["x:tcp/1"]}
    )
    assert more.status_code == 422 and "unknown device" in more.json()["detail"]
    assert snapshot(h) == before
    with h.broker.sessionmaker() as db:
        denials = db.scalars(select(AuditEvent.details).where(AuditEvent.action == "denied")).all()
    assert any("session.approve" in d for d in denials)


async def test_same_public_key_twice_in_one_home_is_refused(harness: Harness) -> None:
    h = harness
    w = await h.world()
    _, public = key_pair()
    one = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], public_key=public))["id"]
    two = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], public_key=public))["id"]
    await h.ok("POST", f"/v1/sessions/{one}/approve", w.owner_a)
    clash = await h.call("POST", f"/v1/sessions/{two}/approve", w.owner_a)
    assert clash.status_code == 422 and "already used" in clash.json()["detail"]


@pytest.mark.parametrize(
    "policy",
    [
        {"max_duration_s": 8 * 3600 + 1},
        {"allowed": ["tv:tcp/0"]},
        {"nope": 1},
        {"technicians": "x"},
    ],
)
async def test_bad_policies_are_refused(harness: Harness, policy: dict[str, Any]) -> None:
    h = harness
    w = await h.world()
    before = snapshot(h)
    response = await h.call("PUT", f"/v1/homes/{w.home_a}/policy", w.owner_a, json=policy)
    assert response.status_code == 422 and response.json()["detail"]
    assert snapshot(h) == before


async def test_huge_bodies_get_413_json(harness: Harness) -> None:
    h = harness
    w = await h.world()
    before = snapshot(h)
    body = {"home": "ann-house", "grants": ["tv:tcp/1"], "duration_s": 60, "reason": "x" * 70_000}
    response = await h.call("POST", "/v1/sessions", w.tech_a, json=body)
    assert response.status_code == 413 and "bytes" in response.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    streamed = await h.call("POST", "/v1/sessions", w.tech_a, content=chunks())
    assert streamed.status_code == 413
    assert snapshot(h) == before


async def test_malformed_json_and_missing_token(harness: Harness) -> None:
    h = harness
    w = await h.world()
    broken = await h.call(
        "POST",
        "/v1/sessions",
        w.tech_a,
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 422 and isinstance(broken.json()["detail"], str)
    anonymous = await h.call("GET", "/v1/sessions")
    assert anonymous.status_code == 401 and anonymous.json()["detail"]
    wrong = await h.call("GET", "/v1/sessions", "ztb_nope")
    assert wrong.status_code == 401


async def test_revoked_and_expired_tokens_stop_working(harness: Harness) -> None:
    h = harness
    w = await h.world()
    minted = await h.ok("POST", f"/v1/users/{w.ids['tech_a']}/tokens", w.tech_a, json={"ttl_s": 60})
    assert (await h.call("GET", "/v1/me", minted["token"])).status_code == 200
    h.clock.advance(60)
    assert (await h.call("GET", "/v1/me", minted["token"])).status_code == 401
    other = await h.ok("POST", f"/v1/users/{w.ids['tech_a']}/tokens", w.tech_a, json={})
    foreign = await h.call("DELETE", f"/v1/tokens/{other['id']}", w.tech_b)
    assert foreign.status_code == 404
    assert (await h.call("DELETE", f"/v1/tokens/{other['id']}", w.tech_a)).status_code == 204
    assert (await h.call("GET", "/v1/me", other["token"])).status_code == 401


async def test_enrollment_token_cannot_be_replayed(harness: Harness) -> None:
    h = harness
    w = await h.world()
    minted = await h.ok("POST", f"/v1/homes/{w.home_a}/enroll-token", w.admin, json={"ttl_s": 600})
    body = enroll_body(minted["token"], "203.0.113.10:51820")
    assert (await h.call("POST", "/v1/agent/enroll", json=body)).status_code == 201
    replay = await h.call("POST", "/v1/agent/enroll", json=body)
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    with h.broker.sessionmaker() as db:
        details = db.scalars(select(AuditEvent.details).where(AuditEvent.action == "denied")).all()
    assert any("agent.enroll" in d for d in details)
    late = await h.ok("POST", f"/v1/homes/{w.home_a}/enroll-token", w.admin, json={"ttl_s": 60})
    h.clock.advance(61)
    expired = await h.call("POST", "/v1/agent/enroll", json={**body, "token": late["token"]})
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


async def test_agent_report_cannot_claim_a_future_revision(harness: Harness) -> None:
    h = harness
    w = await h.world()
    response = await h.call("POST", "/v1/agent/report", w.agent_a, json={"revision": 99})
    assert response.status_code == 422
