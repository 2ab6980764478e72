"""Forgeries by someone who can write the database (and, last, the data directory too),
each run against a broker that signed checkpoints for an hour of history, then checked
with ``verify --public-key`` (the key printed at bootstrap, kept elsewhere)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from broker.app import create_app
from broker.audit import (
    GENESIS,
    LAST_SIGNED_FILE,
    checkpoint_digest,
    checkpoint_message,
    event_hash,
)
from broker.db.models import AuditCheckpoint, AuditEvent, AuditHead
from ztb.client.commands.audit import saved_digests

from .broker_harness import BOTH_DATABASES, Harness, World, anyio_backend, bearer, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio
ROUNDS = 6  # ten minutes apart, each signed by the maintenance pass


async def signed_history(h: Harness) -> tuple[World, str, str]:
    """An hour of sessions, checkpointed as ``serve`` would; returns the world, the key
    printed at bootstrap and one session id whose report a homeowner saved."""
    w = await h.world()
    pinned = h.broker.signer.public_key
    h.maintenance()
    first = ""
    for _ in range(ROUNDS):
        sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
        await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
        await h.ok("POST", f"/v1/sessions/{sid}/revoke", w.tech_a)
        first = first or sid
        h.clock.advance(600)
        assert h.maintenance()["checkpoint"] > 0
    h.clock.advance(5)
    return w, pinned, first


async def verify(h: Harness, admin: str, pinned: str) -> dict[str, Any]:
    path = "/v1/audit/verify"
    result: dict[str, Any] = await h.ok("GET", path, admin, params={"public_key": pinned})
    return result


def _events(db: Session) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def rehash(db: Session, start: int) -> None:
    """Recompute every hash from event ``start`` on and move the head: a consistent chain."""
    events = _events(db)
    prev = events[start - 2].hash if start > 1 else GENESIS
    for event in events[start - 1 :]:
        event.prev_hash = prev
        event.hash = event_hash(event)
        prev = event.hash
    db.flush()
    db.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=events[-1].seq, hash=prev))


def drop_checkpoints_from(db: Session, seq: int) -> None:
    db.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq >= seq))


def edit_and_rehash(db: Session) -> None:
    """Edit a middle event, recompute every later hash, move the head, drop the later
    checkpoints."""
    target = len(_events(db)) // 2
    db.execute(update(AuditEvent).where(AuditEvent.seq == target).values(actor="user:nobody"))
    rehash(db, target)
    drop_checkpoints_from(db, target)


def truncate_tail(db: Session) -> None:
    """Cut the last events, move the head back, drop the checkpoints that signed them."""
    cut = len(_events(db)) // 2
    db.execute(delete(AuditEvent).where(AuditEvent.seq > cut))
    kept = db.scalars(select(AuditEvent).where(AuditEvent.seq == cut)).one()
    db.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=cut, hash=kept.hash))
    drop_checkpoints_from(db, cut + 1)


def delete_and_renumber(db: Session) -> None:
    """Remove one middle event, renumber the later ones, rehash, drop later checkpoints."""
    target = len(_events(db)) // 2
    db.execute(delete(AuditEvent).where(AuditEvent.seq == target))
    db.execute(text("UPDATE audit_events SET seq = seq - 1 WHERE seq > :t"), {"t": target})
    db.expire_all()
    rehash(db, target)
    drop_checkpoints_from(db, target)


FORGERIES: dict[str, Callable[[Session], None]] = {
    "edit, rehash, move head, drop checkpoints": edit_and_rehash,
    "truncate tail, move head, drop checkpoints": truncate_tail,
    "delete in the middle, renumber, rehash": delete_and_renumber,
}


def forge(h: Harness, forgery: Callable[[Session], None]) -> None:
    with h.broker.sessionmaker() as db, db.begin():
        forgery(db)


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=FORGERIES.keys())
async def test_database_forgery_is_detected_and_never_signed(
    harness: Harness, forgery: Callable[[Session], None]
) -> None:
    h = harness
    w, pinned, _ = await signed_history(h)
    assert (await verify(h, w.admin, pinned))["ok"] is True
    forge(h, forgery)
    result = await verify(h, w.admin, pinned)
    assert result["ok"] is False, result
    assert "the last this broker signed, is gone or changed" in result["first_bad"]["problem"]
    # The running broker does not sign the forged tip, now or on its next passes.
    before = result["checkpoints"]
    assert h.maintenance()["checkpoint"] == 0
    refused = await h.call("POST", "/v1/audit/checkpoint", w.admin)
    assert refused.status_code == 409 and "not signed" in refused.json()["detail"]
    h.clock.advance(3600)
    assert h.maintenance()["checkpoint"] == 0
    result = await verify(h, w.admin, pinned)
    assert result["ok"] is False and result["checkpoints"] == before


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=FORGERIES.keys())
async def test_forgery_is_detected_by_the_chain_alone(
    harness: Harness, forgery: Callable[[Session], None]
) -> None:
    """Without the broker's memory of its last signature (a restart after the data
    directory's copy was lost too), the stale newest checkpoint still shows it."""
    h = harness
    w, pinned, _ = await signed_history(h)
    forge(h, forgery)
    h.broker.signer.last_signed = None
    result = await verify(h, w.admin, pinned)
    assert result["ok"] is False, result
    assert "min old (limit 15 min)" in result["first_bad"]["problem"]


async def test_a_checkpoint_removed_in_the_middle_is_named(harness: Harness) -> None:
    h = harness
    w, pinned, _ = await signed_history(h)
    with h.broker.sessionmaker() as db, db.begin():
        db.execute(delete(AuditCheckpoint).where(AuditCheckpoint.number == 3))
    result = await verify(h, w.admin, pinned)
    assert result["first_bad"]["problem"] == "checkpoint 3 is missing (removed)"


def _resign_everything(db: Session, key: Ed25519PrivateKey) -> None:
    """What the holder of ``key`` can do: sign the whole checkpoint chain again."""
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    events = {event.seq: event.hash for event in _events(db)}
    points = list(db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.number)))
    before: AuditCheckpoint | None = None
    for point in points:
        point.hash = events[point.seq]
        point.prev = checkpoint_digest(before) if before else GENESIS
        point.public_key = public
        point.signature = base64.b64encode(key.sign(checkpoint_message(point))).decode()
        before = point
    db.flush()


async def test_a_swapped_key_file_is_detected_with_the_pinned_key(harness: Harness) -> None:
    """Data directory and database: a new key in place of the broker's, the edited chain
    signed with it, the broker restarted on it. Only the pinned key tells."""
    h = harness
    w, pinned, _ = await signed_history(h)
    mallory = Ed25519PrivateKey.generate()
    key_file = h.broker.settings.signing_key_path
    key_file.write_bytes(
        mallory.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (key_file.parent / LAST_SIGNED_FILE).unlink()
    with h.broker.sessionmaker() as db, db.begin():
        target = len(_events(db)) // 2
        db.execute(update(AuditEvent).where(AuditEvent.seq == target).values(actor="user:nobody"))
        rehash(db, target)
        _resign_everything(db, mallory)
    restarted = create_app(h.broker.settings, clock=h.clock)
    transport = httpx.ASGITransport(app=restarted)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        unpinned = (await client.get("/v1/audit/verify", headers=bearer(w.admin))).json()
        assert unpinned["ok"] is True and unpinned["pinned"] is False  # why pinning matters
        answer = await client.get(
            "/v1/audit/verify", params={"public_key": pinned}, headers=bearer(w.admin)
        )
        result = answer.json()
    restarted.state.broker.engine.dispose()
    assert result["ok"] is False and result["pinned"] is True
    assert (
        result["first_bad"]["problem"] == "checkpoint 1 is not signed by the trusted key (forged)"
    )


async def test_a_homeowners_saved_report_catches_a_resigned_chain(
    harness: Harness, tmp_path: Path
) -> None:
    """Database and data directory, using the broker's own key: the pinned key cannot
    tell, the digest in a session report the homeowner saved earlier can."""
    h = harness
    w, pinned, sid = await signed_history(h)
    report = await h.ok("GET", f"/v1/sessions/{sid}/report", w.owner_a)
    assert report["audit"]["checkpoint"]["number"] >= 1
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    key = h.broker.settings.signing_key_path.read_bytes()
    real = serialization.load_pem_private_key(key, password=None)
    assert isinstance(real, Ed25519PrivateKey)
    with h.broker.sessionmaker() as db, db.begin():
        edited = report["audit"]["seq"] - 1
        db.execute(update(AuditEvent).where(AuditEvent.seq == edited).values(actor="user:nobody"))
        rehash(db, edited)
        _resign_everything(db, real)
    h.broker.signer.last_signed = None  # the attacker rewrote the broker's memory as well
    assert (await verify(h, w.admin, pinned))["ok"] is True  # the limit of a pinned key
    body = {"public_key": pinned, "against": saved_digests(saved)}
    result = await h.ok("POST", "/v1/audit/verify", w.admin, json=body)
    assert result["ok"] is False and result["witnesses"] == 1
    seq = report["audit"]["seq"]
    assert result["first_bad"] == {
        "seq": seq,
        "problem": f"event {seq} differs from the digest a witness saved",
    }


async def test_an_untouched_chain_passes_with_saved_digests(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    w, pinned, sid = await signed_history(h)
    report = await h.ok("GET", f"/v1/sessions/{sid}/report", w.owner_a)
    status = await verify(h, w.admin, pinned)
    saved = tmp_path / "saved.jsonl"
    saved.write_text(json.dumps(report) + "\n" + json.dumps(status) + "\n")
    digests = saved_digests(saved)
    assert len(digests) == 2 and all("digest" in d for d in digests)
    body = {"public_key": pinned, "against": digests}
    result = await h.ok("POST", "/v1/audit/verify", w.admin, json=body)
    assert result["ok"] is True and result["witnesses"] == 2


@BOTH_DATABASES
async def test_a_stale_newest_checkpoint_fails_verification(harness: Harness) -> None:
    """A broker that stopped signing (or whose latest checkpoints were removed) fails."""
    h = harness
    w, pinned, _ = await signed_history(h)
    h.clock.advance(16 * 60)
    result = await verify(h, w.admin, pinned)
    assert result["ok"] is False and "min old (limit 15 min)" in result["first_bad"]["problem"]
    h.maintenance()  # the heartbeat checkpoint: nothing new, but signed again
    assert (await verify(h, w.admin, pinned))["ok"] is True


async def test_a_bad_public_key_is_a_422(harness: Harness) -> None:
    h = harness
    w = await h.world()
    answer = await h.call("GET", "/v1/audit/verify?public_key=not-a-key", w.admin)
    assert answer.status_code == 422 and "public_key" in answer.json()["detail"]
