"""The audit chain: tampering with stored events is found and named; appends never fork."""

from __future__ import annotations

import itertools
import json
import os
import threading

import pytest
from sqlalchemy import delete, select, text, update

from broker.audit import append
from broker.db.models import AuditEvent

from .broker_harness import BOTH_DATABASES, Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio


async def busy_chain(h: Harness) -> str:
    """A world with a few sessions: dozens of events. Returns the admin token."""
    w = await h.world()
    for _ in range(3):
        sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
        await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
        await h.ok("POST", f"/v1/sessions/{sid}/revoke", w.tech_a)
    return w.admin


async def verify(h: Harness, admin: str) -> dict[str, object]:
    result: dict[str, object] = await h.ok("GET", "/v1/audit/verify", admin)
    return result


@BOTH_DATABASES
async def test_untouched_chain_verifies_and_exports(harness: Harness) -> None:
    h = harness
    admin = await busy_chain(h)
    assert (await h.ok("POST", "/v1/audit/checkpoint", admin))["seq"] > 0
    result = await verify(h, admin)
    assert result["ok"] is True and result["checkpoints"] == 1
    export = await h.call("GET", "/v1/audit/export", admin)
    assert export.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in export.text.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(events))
    assert result["events"] == len(events)
    key = h.data_dir / "audit-signing.key"
    assert key.stat().st_mode & 0o777 == 0o600


async def test_edited_event_is_named(harness: Harness) -> None:
    h = harness
    admin = await busy_chain(h)
    with h.broker.sessionmaker() as db, db.begin():
        db.execute(update(AuditEvent).where(AuditEvent.seq == 12).values(actor="user:someone_else"))
    result = await verify(h, admin)
    assert result["ok"] is False
    assert result["first_bad"] == {
        "seq": 12,
        "problem": "event 12 was edited (hash does not match content)",
    }


async def test_removed_event_is_named(harness: Harness) -> None:
    h = harness
    admin = await busy_chain(h)
    with h.broker.sessionmaker() as db, db.begin():
        db.execute(delete(AuditEvent).where(AuditEvent.seq == 9))
    first_bad = (await verify(h, admin))["first_bad"]
    assert first_bad == {"seq": 9, "problem": "event 9 is missing (removed)"}


async def test_removed_last_event_is_named(harness: Harness) -> None:
    h = harness
    admin = await busy_chain(h)
    with h.broker.sessionmaker() as db, db.begin():
        last = db.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))
        db.execute(delete(AuditEvent).where(AuditEvent.seq == last))
    first_bad = (await verify(h, admin))["first_bad"]
    assert isinstance(first_bad, dict) and first_bad["seq"] == last


async def test_reordered_events_are_named(harness: Harness) -> None:
    h = harness
    admin = await busy_chain(h)
    with h.broker.sessionmaker() as db, db.begin():
        db.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = 7"))
        db.execute(text("UPDATE audit_events SET seq = 7 WHERE seq = 8"))
        db.execute(text("UPDATE audit_events SET seq = 8 WHERE seq = -1"))
    first_bad = (await verify(h, admin))["first_bad"]
    assert first_bad == {"seq": 7, "problem": "event 7 is out of place (reordered)"}


async def test_rewritten_chain_is_caught_by_the_signed_checkpoint(harness: Harness) -> None:
    """An attacker who edits an event and recomputes every later hash still fails."""
    h = harness
    admin = await busy_chain(h)
    await h.ok("POST", "/v1/audit/checkpoint", admin)
    from broker.audit import event_hash

    with h.broker.sessionmaker() as db, db.begin():
        events = list(db.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        events[4].actor = "user:nobody"
        prev = events[3].hash
        for event in events[4:]:
            event.prev_hash = prev
            event.hash = event_hash(event)
            prev = event.hash
        db.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})
    result = await verify(h, admin)
    first_bad = result["first_bad"]
    assert isinstance(first_bad, dict) and first_bad["seq"] == len(events)
    assert "signed checkpoint" in str(first_bad["problem"])


@BOTH_DATABASES
async def test_concurrent_appends_never_fork_the_chain(harness: Harness) -> None:
    """Many threads append at once through separate connections; the chain stays a line."""
    h = harness
    admin = await busy_chain(h)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                with h.broker.sessionmaker() as db, db.begin():
                    append(db, h.clock(), f"test:{n}", "test.append", f"obj{n}", {"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(n,)) for n in range(min(8, os.cpu_count() or 2) + 4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    result = await verify(h, admin)
    assert result["ok"] is True
    with h.broker.sessionmaker() as db:
        count = len(
            db.scalars(select(AuditEvent.seq).where(AuditEvent.action == "test.append")).all()
        )
    assert count == 10 * len(threads)
