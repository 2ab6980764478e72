"""The long-poll's kept desired-state document and the batched last-seen times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent, HomeAgent
from broker.state_cache import DesiredStates, StateAtRevision
from netpolicy import DesiredState

from .broker_harness import BOTH_DATABASES, Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio
STATE = "/v1/agent/state?after={}&wait=0"


async def _approve(h: Harness, tech: str, owner: str, duration_s: int) -> dict[str, object]:
    session = await h.request(tech, "ann-house", ["thermostat:tcp/443"], duration_s)
    return await h.ok("POST", f"/v1/sessions/{session['id']}/approve", owner)  # type: ignore[no-any-return]


@BOTH_DATABASES
async def test_a_kept_document_counts_down_and_never_lengthens_a_lifetime(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await _approve(h, w.tech_a, w.owner_a, 900)
    first = await h.ok("GET", STATE.format(1), w.agent_a)
    assert first["revision"] == 2 and first["sessions"][0]["expires_in"] == 900
    h.clock.advance(0.4)  # same revision: the kept document, counted from this answer
    assert (await h.ok("GET", STATE.format(1), w.agent_a))["sessions"][0]["expires_in"] == 899.6
    h.clock.advance(899.5)
    left = (await h.ok("GET", STATE.format(1), w.agent_a))["sessions"][0]["expires_in"]
    assert left == 0.1
    h.clock.advance(0.1)  # time is up: gone from the answer before the expiry job ran
    late = await h.ok("GET", STATE.format(1), w.agent_a)
    assert late["revision"] == 2 and late["sessions"] == []


@BOTH_DATABASES
async def test_a_new_revision_replaces_the_kept_document(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await _approve(h, w.tech_a, w.owner_a, 900)
    assert len((await h.ok("GET", STATE.format(1), w.agent_a))["sessions"]) == 1
    second = await _approve(h, w.tech_a, w.owner_a, 600)
    doc = DesiredState.from_dict(await h.ok("GET", STATE.format(2), w.agent_a))
    assert doc.revision == 3 and {s.session_id for s in doc.sessions} >= {second["id"]}
    assert len(doc.sessions) == 2
    ended = await h.ok("POST", f"/v1/sessions/{second['id']}/revoke", w.owner_a)
    assert ended["state"] == "ended"
    doc = DesiredState.from_dict(await h.ok("GET", STATE.format(3), w.agent_a))
    assert doc.revision == 4 and len(doc.sessions) == 1


def test_an_older_read_never_replaces_a_newer_kept_document() -> None:
    states = DesiredStates()
    newer = StateAtRevision(5, {"revision": 5}, ())
    older = StateAtRevision(4, {"revision": 4}, ())
    assert states.get("home", 5, lambda: newer) is newer
    assert states.get("home", 4, lambda: older) is older  # that read's own snapshot
    assert states.get("home", 5, lambda: pytest.fail("rebuilt a kept revision")) is newer
    with pytest.raises(AssertionError, match="another revision"):
        states.get("home", 6, lambda: older)


def test_render_rounds_down_from_the_answer_time() -> None:
    expires = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    state = StateAtRevision(1, {"revision": 1}, (({"session_id": "s"}, expires),))
    assert b'"expires_in": 9.999' in state.render(expires - timedelta(microseconds=9_999_999))
    assert b'"expires_in": 0.001' in state.render(expires - timedelta(microseconds=1_999))
    assert b'"sessions": []' in state.render(expires - timedelta(microseconds=999))


async def test_last_seen_is_written_in_batches(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await h.ok("GET", STATE.format(-1), w.agent_a)  # first use of the certificate: written now
    first_seen = _last_seen(h, w.agent_a.agent_id)
    assert first_seen == h.clock.now
    h.clock.advance(30)
    await h.ok("GET", STATE.format(-1), w.agent_a)
    assert _last_seen(h, w.agent_a.agent_id) == first_seen  # noted, not yet written
    assert h.maintenance()["agents_seen"] == 1
    assert _last_seen(h, w.agent_a.agent_id) == h.clock.now


def _last_seen(h: Harness, agent_id: str) -> datetime | None:
    with h.broker.sessionmaker() as db:
        agent = db.get(HomeAgent, agent_id)
        assert agent is not None
        return agent.last_seen_at


@BOTH_DATABASES
async def test_polls_woken_together_all_get_the_new_revision(harness: Harness) -> None:
    h = harness
    w = await h.world()
    answers: list[int] = []

    async def poll() -> None:
        answers.append(
            (await h.ok("GET", "/v1/agent/state?after=1&wait=10", w.agent_a))["revision"]
        )

    async with anyio.create_task_group() as polls:
        for _ in range(5):
            polls.start_soon(poll)
        await anyio.sleep(0.3)  # all five are waiting
        await _approve(h, w.tech_a, w.owner_a, 900)
    assert answers == [2] * 5


async def test_a_bad_report_is_refused_whole_and_audited(harness: Harness) -> None:
    """``netpolicy.AgentReport`` reads the report: one bad element refuses all of it (400),
    the refusal is in the audit chain, and nothing of it is stored."""
    h = harness
    w = await h.world()
    sid = (await _approve(h, w.tech_a, w.owner_a, 900))["id"]
    good = {
        "session_id": sid,
        "device_ip": "192.168.1.20",
        "proto": "tcp",
        "ports": "443",
        "packets": 5,
        "bytes": 500,
    }
    bad_bodies: list[dict[str, object]] = [
        {"json": {"revision": 2, "elements": [good, {**good, "packets": -1}]}},
        {"json": {"revision": 2, "neighbours": []}},  # not part of the report model
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
    ]
    for body in bad_bodies:
        answer = await h.call("POST", "/v1/agent/report", w.agent_a, **body)
        assert answer.status_code == 400 and answer.json()["detail"].startswith("report")
    shown = await h.ok("GET", f"/v1/sessions/{sid}/report", w.owner_a)
    assert shown["session"]["state"] == "approved" and shown["grants"][0]["packets"] == 0
    with h.broker.read() as db:
        refusals = db.scalars(select(AuditEvent).where(AuditEvent.action == "denied")).all()
    attempts = [(e.actor, json.loads(e.details)["attempt"]) for e in refusals]
    assert attempts == [(f"agent:{w.agent_a.agent_id}", "agent.report")] * 3

    await h.ok("POST", "/v1/agent/report", w.agent_a, json={"revision": 2, "elements": [good]})
    shown = await h.ok("GET", f"/v1/sessions/{sid}/report", w.owner_a)
    assert shown["session"]["state"] == "active" and shown["grants"][0]["packets"] == 5
