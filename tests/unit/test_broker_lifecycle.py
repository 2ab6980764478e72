"""Sessions end to end: request, approve, agent applies, config, escalation, every end."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest
from sqlalchemy import select

from broker.app import create_app
from broker.context import Broker
from broker.db.models import AuditEvent
from broker.expiry import run_maintenance
from netpolicy import DesiredState
from ztb.wgkeys import key_pair

from .broker_harness import (
    BOTH_DATABASES,
    Harness,
    TlsTerminator,
    anyio_backend,
    bearer,
    harness,
    presenting,
)

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio


@BOTH_DATABASES
async def test_full_lifecycle_with_technician_key(harness: Harness) -> None:
    h = harness
    w = await h.world()
    _, public = key_pair()
    session = await h.request(
        w.tech_a, "ann-house", ["thermostat:tcp/443"], 1800, public_key=public
    )
    assert session["state"] == "requested" and session["key_origin"] == "technician"
    sid = session["id"]

    # The agent sees nothing new yet: revision 1, no sessions.
    state = await h.ok("GET", "/v1/agent/state?after=0&wait=0", w.agent_a)
    assert state["revision"] == 1 and state["sessions"] == []
    empty = await h.call("GET", "/v1/agent/state?after=1&wait=0", w.agent_a)
    assert empty.status_code == 204

    approved = await h.ok(
        "POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={"duration_s": 900}
    )
    assert approved["state"] == "approved" and approved["duration_s"] == 900
    assert (
        approved["tunnel_ip"] == "100.96.0.2"
        and approved["approved_by"] == f"user:{w.ids['owner_a']}"
    )

    doc = DesiredState.from_dict(await h.ok("GET", "/v1/agent/state?after=1&wait=0", w.agent_a))
    assert doc.revision == 2 and len(doc.sessions) == 1
    live = doc.sessions[0]
    assert live.public_key == public and live.expires_in == 900 and live.preshared_key
    assert [str(g.device_ip) for g in live.grants] == ["192.168.1.20"]

    h.clock.advance(60)
    report = {
        "revision": 2,
        "peers": [{"public_key": public, "last_handshake": h.clock.now.timestamp()}],
        "elements": [
            {
                "session_id": sid,
                "device_ip": "192.168.1.20",
                "proto": "tcp",
                "ports": "443",
                "packets": 12,
                "bytes": 3400,
            },
        ],
    }
    assert (await h.call("POST", "/v1/agent/report", w.agent_a, json=report)).status_code == 204
    active = await h.ok("GET", f"/v1/sessions/{sid}", w.tech_a)
    assert active["state"] == "active"

    config = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
    assert config.status_code == 200 and config.headers["x-ztb-private-key"] == "withheld"
    assert "AllowedIPs = 192.168.1.20/32" in config.text and "DNS" not in config.text
    assert "Endpoint = 203.0.113.10:51820" in config.text and "PresharedKey = " in config.text

    doc = DesiredState.from_dict(await h.ok("GET", "/v1/agent/state?after=0&wait=0", w.agent_a))
    assert doc.sessions[0].expires_in == 840  # measured on the broker's clock

    ended = await h.ok("POST", f"/v1/sessions/{sid}/revoke", w.owner_a, json={"reason": "done"})
    assert ended["state"] == "ended" and ended["end_reason"] == "revoked"
    doc = DesiredState.from_dict(await h.ok("GET", "/v1/agent/state?after=2&wait=0", w.agent_a))
    assert doc.revision == 3 and doc.sessions == ()

    report_doc = await h.ok("GET", f"/v1/sessions/{sid}/report", w.owner_a)
    actions = [e["action"] for e in report_doc["timeline"]]
    assert actions == [
        "session.requested",
        "session.approved",
        "session.active",
        "session.config_downloaded",
        "session.ended",
    ]
    assert report_doc["grants"][0]["packets"] == 12 and report_doc["grants"][0]["bytes"] == 3400
    assert report_doc["last_handshake"] is not None
    assert report_doc["approved_by"] == f"user:{w.ids['owner_a']}"
    gone = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
    assert gone.status_code == 409


async def test_broker_made_key_is_revealed_once(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/8080-8090"]))["id"]
    approved = await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    assert approved["key_origin"] == "broker" and approved["public_key"]
    first = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
    assert first.headers["x-ztb-private-key"] == "included"
    private_line = next(line for line in first.text.splitlines() if line.startswith("PrivateKey"))
    assert "<" not in private_line
    second = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
    assert second.headers["x-ztb-private-key"] == "withheld"
    assert private_line not in second.text
    # Not kept anywhere on disk after the reveal (secure_delete overwrites freed content).
    secret = private_line.split(" = ")[1].encode()
    h.broker.engine.dispose()  # closes connections: the WAL is checkpointed into the file
    for path in h.data_dir.glob("broker.db*"):
        assert secret not in path.read_bytes(), path


async def test_every_end_reason(harness: Harness) -> None:
    h = harness
    w = await h.world()
    grants = ["thermostat:tcp/443"]
    denied = (await h.request(w.tech_a, "ann-house", grants))["id"]
    cancelled = (await h.request(w.tech_a, "ann-house", grants))["id"]
    revoked_by_tech = (await h.request(w.tech_a, "ann-house", grants))["id"]
    expiring = (await h.request(w.tech_a, "ann-house", grants, 600))["id"]
    revoked_by_admin = (await h.request(w.tech_a, "ann-house", grants))["id"]

    r = await h.ok("POST", f"/v1/sessions/{denied}/deny", w.owner_a, json={"reason": "no"})
    assert (r["state"], r["end_reason"]) == ("ended", "denied")
    r = await h.ok("POST", f"/v1/sessions/{cancelled}/cancel", w.tech_a)
    assert r["end_reason"] == "cancelled"
    await h.ok("POST", f"/v1/sessions/{revoked_by_tech}/approve", w.owner_a)
    r = await h.ok("POST", f"/v1/sessions/{revoked_by_tech}/revoke", w.tech_a)
    assert r["end_reason"] == "revoked" and r["ended_by"] == f"user:{w.ids['tech_a']}"
    await h.ok("POST", f"/v1/sessions/{revoked_by_admin}/approve", w.admin)
    r = await h.ok("POST", f"/v1/sessions/{revoked_by_admin}/revoke", w.admin)
    assert r["end_reason"] == "revoked"
    await h.ok("POST", f"/v1/sessions/{expiring}/approve", w.owner_a)

    h.clock.advance(599)
    assert h.maintenance()["expired"] == 0
    h.clock.advance(1)
    assert h.maintenance()["expired"] == 1
    assert h.maintenance()["expired"] == 0  # idempotent
    r = await h.ok("GET", f"/v1/sessions/{expiring}", w.tech_a)
    assert (r["state"], r["end_reason"], r["ended_by"]) == ("ended", "expired", "broker:expiry")
    doc = await h.ok("GET", "/v1/agent/state?after=0&wait=0", w.agent_a)
    assert doc["sessions"] == []

    listed = await h.ok("GET", "/v1/sessions?state=ended", w.owner_a)
    assert {s["end_reason"] for s in listed["sessions"]} == {
        "denied",
        "cancelled",
        "revoked",
        "expired",
    }


async def test_unanswered_request_expires_and_cannot_be_approved(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    h.clock.advance(h.broker.settings.request_ttl_s)
    late = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    assert late.status_code == 409 and late.json()["detail"]
    r = await h.ok("GET", f"/v1/sessions/{sid}", w.owner_a)
    assert (r["state"], r["end_reason"]) == ("ended", "expired")


async def test_approve_after_expiry_is_refused(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], 300))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    await h.ok("POST", f"/v1/sessions/{sid}/grants", w.tech_a, json={"grants": ["tv:tcp/80"]})
    h.clock.advance(301)  # the periodic job has not run yet
    late = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    assert late.status_code == 409
    r = await h.ok("GET", f"/v1/sessions/{sid}", w.tech_a)
    assert (r["state"], r["end_reason"]) == ("ended", "expired")
    assert r["grants"][0]["ports"] == "443" and len(r["grants"]) == 1
    config = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
    assert config.status_code == 409


async def test_escalation_needs_a_second_approval(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["thermostat:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    rev = (await h.ok("GET", "/v1/agent/state?after=0&wait=0", w.agent_a))["revision"]

    asked = await h.ok(
        "POST", f"/v1/sessions/{sid}/grants", w.tech_a, json={"grants": ["tv:tcp/22"]}
    )
    assert [g["device"] for g in asked["pending_grants"]] == ["tv"]
    assert [g["device"] for g in asked["grants"]] == ["thermostat"]
    unchanged = await h.call("GET", f"/v1/agent/state?after={rev}&wait=0", w.agent_a)
    assert unchanged.status_code == 204  # nothing new for the router until approved

    denied = await h.ok("POST", f"/v1/sessions/{sid}/deny", w.owner_a)
    assert denied["state"] == "approved" and denied["pending_grants"] == []

    await h.ok("POST", f"/v1/sessions/{sid}/grants", w.tech_a, json={"grants": ["tv:tcp/22"]})
    tech_self = await h.call("POST", f"/v1/sessions/{sid}/approve", w.tech_a)
    assert tech_self.status_code == 403
    approved = await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    assert sorted(g["device"] for g in approved["grants"]) == ["thermostat", "tv"]
    assert approved["pending_grants"] == [] and approved["expires_at"] is not None
    doc = DesiredState.from_dict(
        await h.ok("GET", f"/v1/agent/state?after={rev}&wait=0", w.agent_a)
    )
    assert len(doc.sessions[0].grants) == 2
    config = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
    assert "AllowedIPs = 192.168.1.20/32, 192.168.1.30/32" in config.text


async def test_auto_approve_rule_skips_the_homeowner(harness: Harness) -> None:
    h = harness
    w = await h.world()
    policy = {
        "max_duration_s": 7200,
        "auto_approve": [
            {"technicians": ["tina@example.com"], "grants": ["tv:tcp/443"], "max_duration_s": 600}
        ],
    }
    await h.ok("PUT", f"/v1/homes/{w.home_a}/policy", w.owner_a, json=policy)
    auto = await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], 600)
    assert auto["state"] == "approved" and auto["approved_by"] == "policy:auto-approve#0"
    manual = await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], 601)
    assert manual["state"] == "requested"
    other = await h.request(w.tech_b, "ann-house", ["tv:tcp/443"], 60)
    assert other["state"] == "requested"


async def test_tunnel_addresses_are_unique_and_reused_after_end(harness: Harness) -> None:
    h = harness
    w = await h.world()
    ips = []
    sids = []
    for _ in range(3):
        sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
        ips.append((await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a))["tunnel_ip"])
        sids.append(sid)
    assert ips == ["100.96.0.2", "100.96.0.3", "100.96.0.4"]
    await h.ok("POST", f"/v1/sessions/{sids[0]}/revoke", w.owner_a)
    sid = (await h.request(w.tech_b, "ann-house", ["tv:tcp/443"]))["id"]
    assert (await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a))[
        "tunnel_ip"
    ] == "100.96.0.2"
    home_b = await h.ok("GET", f"/v1/homes/{w.home_b}", w.admin)
    assert home_b["tunnel_pool"] == "100.96.1.0/24"


@BOTH_DATABASES
async def test_long_poll_wakes_on_approval(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    results: list[int] = []

    async def poll() -> None:
        response = await h.call("GET", "/v1/agent/state?after=1&wait=20", w.agent_a)
        results.append(response.status_code)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(poll)
            await anyio.sleep(0.2)
            assert results == []
            await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    assert results == [200]


@pytest.mark.parametrize("harness", ["postgresql"], indirect=True)
async def test_long_poll_on_one_replica_wakes_on_approval_at_another(harness: Harness) -> None:
    """Two broker apps on one PostgreSQL database: LISTEN/NOTIFY carries the wake-up."""
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    replica = create_app(h.broker.settings, clock=h.clock)
    transport = httpx.ASGITransport(app=TlsTerminator(replica))
    results: list[tuple[int, float]] = []
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as other:

            async def poll() -> None:
                started = time.monotonic()
                response = await other.get(
                    "/v1/agent/state?after=1&wait=20", headers=presenting(w.agent_a)
                )
                results.append((response.status_code, time.monotonic() - started))

            with anyio.fail_after(15):
                async with anyio.create_task_group() as group:
                    group.start_soon(poll)
                    await anyio.sleep(0.3)
                    assert results == []
                    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    finally:
        replica.state.broker.notifier.close()
        replica.state.broker.engine.dispose()
    assert [status for status, _ in results] == [200]
    assert results[0][1] < 5  # woken by the notification, not by the 20 s timeout


@BOTH_DATABASES
async def test_state_survives_a_restart(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    h.broker.engine.dispose()
    app = create_app(h.broker.settings, clock=h.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        again = await client.get(f"/v1/sessions/{sid}", headers=bearer(w.tech_a))
        assert again.json()["state"] == "approved"
        verify = await client.get("/v1/audit/verify", headers=bearer(w.admin))
        assert verify.json()["ok"] is True
    app.state.broker.engine.dispose()


@BOTH_DATABASES
async def test_expiry_job_in_two_processes_ends_each_session_once(harness: Harness) -> None:
    """Two brokers on one database run the job at the same moment: no double ending."""
    h = harness
    w = await h.world()
    for _ in range(15):
        sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], 60))["id"]
        await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    h.clock.advance(60)
    other: Broker = create_app(h.broker.settings, clock=h.clock).state.broker
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda b=b: results.append(run_maintenance(b)["expired"]))
        for b in (h.broker, other, h.broker, other)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    other.engine.dispose()
    assert sum(results) == 15
    with h.broker.sessionmaker() as db:
        ended = db.scalars(select(AuditEvent.object).where(AuditEvent.action == "session.ended"))
        assert len(list(ended)) == 15
    verify = await h.ok("GET", "/v1/audit/verify", w.admin)
    assert verify["ok"] is True


@BOTH_DATABASES
async def test_concurrent_approvals_get_distinct_tunnel_addresses(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sids = [(await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"] for _ in range(12)]
    statuses: list[int] = []

    async def approve(sid: str) -> None:
        statuses.append(
            (await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a)).status_code
        )

    async with anyio.create_task_group() as group:
        for sid in sids:
            group.start_soon(approve, sid)
    assert statuses == [200] * 12
    listed = await h.ok("GET", "/v1/sessions?state=approved", w.owner_a)
    ips = [s["tunnel_ip"] for s in listed["sessions"]]
    assert len(ips) == 12 and len(set(ips)) == 12
    doc = await h.ok("GET", "/v1/agent/state?after=0&wait=0", w.agent_a)
    assert doc["revision"] == 13 and len(doc["sessions"]) == 12
