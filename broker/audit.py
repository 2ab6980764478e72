"""The audit chain: hash-linked events, Ed25519-signed checkpoints, verification, export.

Each event's hash is SHA-256 over the canonical JSON of its fields including ``prev_hash``,
so editing, removing or reordering an event breaks the chain at that event. Checkpoints sign
the tip with the broker's key, so rewriting the whole chain after an edit is caught too.
Appends lock the single ``audit_head`` row (``FOR UPDATE``; on SQLite the database write
lock taken by ``BEGIN IMMEDIATE``), so concurrent writers never fork the chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from .clock import rfc3339
from .db.models import AuditCheckpoint, AuditEvent, AuditHead, table_of

GENESIS = "0" * 64


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(event: AuditEvent) -> str:
    body = {
        "seq": event.seq,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "object": event.object,
        "details": json.loads(event.details),
        "prev_hash": event.prev_hash,
    }
    return hashlib.sha256(canonical(body).encode()).hexdigest()


# Core statements on the tables, built once (the cache key is memoized): every state
# change appends through these, and the ORM's bulk-DML layer would cost more than the SQL.
_HEAD, _EVENTS = table_of(AuditHead), table_of(AuditEvent)
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_ADD_EVENT = insert(_EVENTS)


def append(
    db: Session, now: datetime, actor: str, action: str, obj: str, details: dict[str, Any]
) -> AuditEvent:
    """Add one event in the caller's transaction (it commits or rolls back with the change).

    Plain statements on the session's connection rather than ORM objects: the event is
    written once and never changed, so the unit-of-work bookkeeping would be pure overhead
    on every state change.
    """
    connection = db.connection()
    head = connection.execute(_LOCK_HEAD).one()
    event = AuditEvent(
        seq=head.seq + 1,
        at=rfc3339(now) or "",
        actor=actor,
        action=action,
        object=obj,
        details=canonical(details),
        prev_hash=head.hash,
        hash="",
    )
    event.hash = event_hash(event)
    connection.execute(
        _ADD_EVENT,
        {
            "seq": event.seq,
            "at": event.at,
            "actor": event.actor,
            "action": event.action,
            "object": event.object,
            "details": event.details,
            "prev_hash": event.prev_hash,
            "hash": event.hash,
        },
    )
    connection.execute(_MOVE_HEAD, {"new_seq": event.seq, "new_hash": event.hash})
    return event


def event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": event.at,
        "actor": event.actor,
        "action": event.action,
        "object": event.object,
        "details": json.loads(event.details),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def export_lines(db: Session) -> Iterator[str]:
    """JSON lines in chain order: what ``ztb audit export`` writes."""
    for event in db.scalars(select(AuditEvent).order_by(AuditEvent.seq)):
        yield canonical(event_dict(event)) + "\n"


class Signer:
    """The broker's Ed25519 checkpoint key, kept in a 0600 file in the data dir."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(loaded)

    @property
    def public_key(self) -> str:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._key.sign(message)).decode()


def _checkpoint_message(seq: int, digest: str, at: str) -> bytes:
    return canonical({"seq": seq, "hash": digest, "at": at}).encode()


def checkpoint(db: Session, now: datetime, signer: Signer) -> AuditCheckpoint | None:
    """Sign the current tip unless it is already signed; returns the new checkpoint."""
    head = db.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
    last = db.scalars(select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq.desc())).first()
    if head.seq == 0 or last == head.seq:
        return None
    at = rfc3339(now) or ""
    point = AuditCheckpoint(
        seq=head.seq,
        hash=head.hash,
        at=at,
        public_key=signer.public_key,
        signature=signer.sign(_checkpoint_message(head.seq, head.hash, at)),
    )
    db.add(point)
    db.flush()
    return point


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "ok": self.ok,
            "events": self.events,
            "checkpoints": self.checkpoints,
        }
        if not self.ok:
            result["first_bad"] = {"seq": self.first_bad_seq, "problem": self.problem}
        return result


def verify(db: Session, trusted_public_key: str) -> Verification:
    """Walk the chain and the checkpoints; name the first event that is not as written."""
    events = list(db.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    points = list(db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))
    head = db.get(AuditHead, 1)

    def bad(seq: int, problem: str) -> Verification:
        return Verification(False, len(events), len(points), seq, problem)

    hashes = {event.hash for event in events}
    prev, expected = GENESIS, 1
    for event in events:
        if event.seq != expected:
            return bad(expected, f"event {expected} is missing (removed)")
        if event_hash(event) != event.hash:
            if event.prev_hash != prev and event.prev_hash in hashes:
                return bad(event.seq, f"event {event.seq} is out of place (reordered)")
            return bad(event.seq, f"event {event.seq} was edited (hash does not match content)")
        if event.prev_hash != prev:
            return bad(
                event.seq,
                f"event {event.seq} does not follow event {event.seq - 1} "
                f"(event {event.seq - 1} was rewritten, or events were removed or reordered)",
            )
        prev, expected = event.hash, expected + 1
    if head is None or head.seq != expected - 1 or head.hash != prev:
        return bad(expected, f"event {expected} and later are missing (removed from the end)")
    by_seq = {event.seq: event for event in events}
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted_public_key))
    for point in points:
        if point.public_key != trusted_public_key:
            return bad(point.seq, f"checkpoint at event {point.seq} is signed by another key")
        try:
            message = _checkpoint_message(point.seq, point.hash, point.at)
            public.verify(base64.b64decode(point.signature), message)
        except (InvalidSignature, ValueError):
            return bad(point.seq, f"checkpoint at event {point.seq} has a bad signature")
        signed = by_seq.get(point.seq)
        if signed is None or signed.hash != point.hash:
            return bad(point.seq, f"event {point.seq} differs from its signed checkpoint")
    return Verification(True, len(events), len(points))
