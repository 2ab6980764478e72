"""The audit chain: hash-linked events and the Ed25519-signed checkpoints over them.

Each event's hash is SHA-256 over the canonical JSON of its fields including ``prev_hash``,
so editing, removing or reordering an event breaks the chain at that event. Checkpoints sign
the tip with the broker's key and form a chain of their own (a gap-free ``number`` and the
previous checkpoint's digest in ``prev``), so rewriting the chain after an edit needs the
key, and removing the checkpoints that would show it leaves a gap or a stale newest one
(``broker.audit_verify``). The broker remembers the last checkpoint it signed in a file
beside its key and checks the chain from there before it signs again: it never signs a
tip that someone with only database access forged.
Appends lock the single ``audit_head`` row (``FOR UPDATE``; on SQLite the database write
lock taken by ``BEGIN IMMEDIATE``), so concurrent writers never fork the chain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from ztb.files import write_atomic

from .clock import rfc3339
from .db.models import AuditCheckpoint, AuditEvent, AuditHead, table_of

if TYPE_CHECKING:
    from .context import Broker

log = logging.getLogger("ztb.broker.audit")
GENESIS = "0" * 64


def moment(at: str) -> datetime:
    """An event's or checkpoint's stored time (RFC 3339, UTC) as a datetime."""
    return datetime.fromisoformat(at)


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
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)


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


def tip_digest(db: Session) -> dict[str, Any]:
    """The newest event's ``{seq, hash}`` in this transaction: a webhook carries the one
    about its own change, so the homeowner holds a digest of the chain outside the broker."""
    head = db.connection().execute(_READ_HEAD).one()
    return {"seq": head.seq, "hash": head.hash}


def digest_covering(db: Session, event: AuditEvent) -> dict[str, Any]:
    """A session report's witness digest: its last event and the first checkpoint that
    signed it (None until the next checkpoint, a few seconds later)."""
    query = select(AuditCheckpoint).where(AuditCheckpoint.seq >= event.seq)
    point = db.scalars(query.order_by(AuditCheckpoint.number).limit(1)).first()
    return {
        "seq": event.seq,
        "hash": event.hash,
        "checkpoint": checkpoint_dict(point) if point else None,
    }


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


def checkpoint_message(point: AuditCheckpoint) -> bytes:
    """What a checkpoint's signature covers (and its digest hashes)."""
    if point.prev is None:  # signed before checkpoints were chained (migration 0004)
        return canonical({"seq": point.seq, "hash": point.hash, "at": point.at}).encode()
    body = {
        "number": point.number,
        "seq": point.seq,
        "hash": point.hash,
        "at": point.at,
        "prev": point.prev,
    }
    return canonical(body).encode()


def checkpoint_digest(point: AuditCheckpoint) -> str:
    """The checkpoint's own hash: the next one names it, witnesses save it."""
    return hashlib.sha256(checkpoint_message(point)).hexdigest()


def checkpoint_dict(point: AuditCheckpoint) -> dict[str, Any]:
    return {
        "number": point.number,
        "seq": point.seq,
        "hash": point.hash,
        "at": point.at,
        "prev": point.prev,
        "digest": checkpoint_digest(point),
        "public_key": point.public_key,
        "signature": point.signature,
    }


@dataclass(frozen=True, slots=True)
class Signed:
    """The last checkpoint this broker signed, as remembered outside the database."""

    number: int
    digest: str
    seq: int
    hash: str


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A base64 raw Ed25519 public key (what bootstrap prints); ValueError if it is not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise ValueError("not a base64 Ed25519 public key (32 bytes)") from None


def signature_ok(public: Ed25519PublicKey, point: AuditCheckpoint) -> bool:
    try:
        public.verify(base64.b64decode(point.signature), checkpoint_message(point))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


class Signer:
    """The broker's Ed25519 checkpoint key (a 0600 file in the data dir) and its memory of
    the last checkpoint it signed (``audit-last-checkpoint.json`` beside the key)."""

    def __init__(self, key: Ed25519PrivateKey, record: Path | None = None) -> None:
        self._key = key
        self._record = record
        self.public_key = public_key_text(key.public_key())
        self.verifier = key.public_key()
        self.last_signed: Signed | None = None
        if record is not None and record.exists():
            try:
                self.last_signed = Signed(**json.loads(record.read_text()))
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"{record} is not a checkpoint record ({exc}); move it away to have the "
                    "whole chain checked again"
                ) from None

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
        return cls(loaded, path.with_name(LAST_SIGNED_FILE))

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._key.sign(message)).decode()

    def remember(self, signed: Signed) -> None:
        """Called after the checkpoint's transaction committed (a crash in between leaves
        the previous one remembered, from which the new one still verifies)."""
        self.last_signed = signed
        if self._record is not None:
            write_atomic(self._record, canonical(asdict(signed)) + "\n")


LAST_SIGNED_FILE = "audit-last-checkpoint.json"


class ChainBroken(Exception):
    """The chain since the last checkpoint this broker signed does not verify: not signed."""


def newest_checkpoint(db: Session) -> AuditCheckpoint | None:
    return db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.number.desc())).first()


def checkpoint(
    db: Session, now: datetime, signer: Signer, heartbeat_s: float
) -> AuditCheckpoint | None:
    """Sign the current tip, if it moved or the newest checkpoint is ``heartbeat_s`` old.

    First the chain from the last checkpoint this broker signed to the tip must verify
    (``ChainBroken`` otherwise): someone who rewrote the database gets no signature.
    """
    from .audit_verify import since_last_signed  # verification builds on this module

    head = db.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
    newest = newest_checkpoint(db)
    if head.seq == 0:
        return None
    if newest is not None and newest.seq == head.seq:
        age = (now - moment(newest.at)).total_seconds()
        if age < heartbeat_s:
            return None
    problem = since_last_signed(db, signer)
    if problem is not None:
        raise ChainBroken(problem.text)
    point = AuditCheckpoint(
        number=newest.number + 1 if newest else 1,
        seq=head.seq,
        hash=head.hash,
        at=rfc3339(now) or "",
        prev=checkpoint_digest(newest) if newest else GENESIS,
        public_key=signer.public_key,
        signature="",
    )
    point.signature = signer.sign(checkpoint_message(point))
    db.add(point)
    db.flush()
    return point


def sign_tip(broker: Broker) -> dict[str, Any] | None:
    """One checkpoint in its own transaction, remembered once committed; None if the tip
    was signed recently. Raises ``ChainBroken`` (after logging it) for a forged tip."""
    settings = broker.settings
    try:
        with broker.unit_of_work() as uow:
            point = checkpoint(uow.db, uow.now, broker.signer, settings.audit_heartbeat_s)
            signed = checkpoint_dict(point) if point else None
    except ChainBroken as exc:
        log.error("audit checkpoint refused: %s", exc)
        broker.metrics.audit_events.labels("checkpoint_refused").inc()
        raise
    if signed is not None:
        broker.signer.remember(
            Signed(signed["number"], signed["digest"], signed["seq"], signed["hash"])
        )
    return signed
