"""The history page checks what it shows (and the chain since the last checkpoint), not
the whole chain on every view."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from broker import audit
from broker.audit_verify import verify, verify_shown
from broker.db.models import AuditEvent

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio
FILLER = 5_000


async def test_history_checks_the_sessions_shown_not_the_whole_chain(harness: Harness) -> None:
    h = harness
    w = await h.world()
    with h.broker.sessionmaker() as db, db.begin():
        for n in range(FILLER):
            audit.append(db, h.clock(), "test:filler", "test.filler", f"obj{n}", {"n": n})
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/revoke", w.tech_a)
    assert h.maintenance()["checkpoint"] > 0
    signer = h.broker.signer
    with h.broker.read() as db:
        started = time.perf_counter()
        shown = verify_shown(db, signer, [sid])
        shown_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        full = verify(
            db,
            signer.public_key,
            signer.verifier,
            now=h.clock(),
            settings=h.broker.settings,
            pinned=True,
        )
        full_ms = (time.perf_counter() - started) * 1000
    assert shown.ok and full.ok
    print(f"{FILLER} events: history check {shown_ms:.1f} ms, whole chain {full_ms:.1f} ms")
    assert shown_ms * 10 < full_ms

    # An edit of an event shown is found; one elsewhere, before the checkpoint, is left
    # to ``ztb audit verify``.
    with h.broker.sessionmaker() as db, db.begin():
        db.execute(update(AuditEvent).where(AuditEvent.seq == 5).values(actor="user:x"))
    with h.broker.read() as db:
        assert verify_shown(db, signer, [sid]).ok
    with h.broker.sessionmaker() as db, db.begin():
        last = db.query(AuditEvent).filter(AuditEvent.object == sid).all()[-1]
        db.execute(update(AuditEvent).where(AuditEvent.seq == last.seq).values(actor="user:x"))
        seq = last.seq
    with h.broker.read() as db:
        result = verify_shown(db, signer, [sid])
    assert not result.ok and result.first_bad_seq == seq
