"""Checking the audit chain: the events' hash links, the checkpoints' own chain, coverage.

``verify`` is what ``ztb audit verify`` asks for. Against a public key pinned outside the
database and data directory (``--public-key``), it finds:

- an event edited, removed or reordered (hash links, gap-free ``seq``);
- a rewritten chain: every checkpoint must carry a good signature by the pinned key, name
  the previous checkpoint's digest, follow it without a gap in ``number``, and match the
  event it signed;
- checkpoints removed from the end: the newest must be younger than
  ``audit_max_checkpoint_age_s`` (the running broker signs at least every
  ``audit_heartbeat_s``) with at most ``audit_max_unsigned_events`` events after it;
- the checkpoint this broker last signed (remembered in its data directory) gone or changed;
- any digest a witness saved (session reports, webhook bodies: ``--against``) that the
  chain no longer contains.

``since_last_signed`` is the cheap part the broker runs before signing, and the history
page runs with the events it shows (``verify_shown``), instead of the whole chain per view.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from .audit import (
    GENESIS,
    Signed,
    Signer,
    checkpoint_dict,
    checkpoint_digest,
    event_hash,
    moment,
    newest_checkpoint,
    signature_ok,
)
from .config import Settings
from .db.models import AuditCheckpoint, AuditEvent, AuditHead


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class Witness:
    """A digest saved outside the broker: event ``seq`` had ``hash``; optionally
    checkpoint ``number`` had ``digest``."""

    seq: int
    hash: str
    number: int | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str | None = None
    public_key: str = ""
    pinned: bool = False
    newest: dict[str, Any] | None = None
    witnesses: int = 0

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "ok": self.ok,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "public_key": self.public_key,
            "pinned": self.pinned,
            "newest_checkpoint": self.newest,
            "witnesses": self.witnesses,
        }
        if not self.ok:
            result["first_bad"] = {"seq": self.first_bad_seq, "problem": self.problem}
        return result


def walk_events(events: Sequence[AuditEvent], after_seq: int, after_hash: str) -> Problem | None:
    """The events after ``after_seq`` (whose hash is ``after_hash``), in order, linked."""
    hashes = {event.hash for event in events}
    prev, expected = after_hash, after_seq + 1
    for event in events:
        if event.seq != expected:
            return Problem(expected, f"event {expected} is missing (removed)")
        if event_hash(event) != event.hash:
            if event.prev_hash != prev and event.prev_hash in hashes:
                return Problem(event.seq, f"event {event.seq} is out of place (reordered)")
            return Problem(event.seq, f"event {event.seq} was edited (hash does not match content)")
        if event.prev_hash != prev:
            return Problem(
                event.seq,
                f"event {event.seq} does not follow event {event.seq - 1} "
                f"(event {event.seq - 1} was rewritten, or events were removed or reordered)",
            )
        prev, expected = event.hash, expected + 1
    return None


def walk_checkpoints(
    points: Iterable[AuditCheckpoint],
    public: Ed25519PublicKey,
    public_text: str,
    hash_at: dict[int, str],
    before: AuditCheckpoint | None = None,
) -> Problem | None:
    """Each checkpoint signed by the key, following ``before`` (or starting the chain),
    matching the event it signed (``hash_at``: event seq -> hash)."""
    for point in points:
        number = before.number + 1 if before else 1
        if point.number != number:
            return Problem(point.seq, f"checkpoint {number} is missing (removed)")
        if point.public_key != public_text or not signature_ok(public, point):
            return Problem(
                point.seq, f"checkpoint {number} is not signed by the trusted key (forged)"
            )
        if point.prev is not None and point.prev != (
            checkpoint_digest(before) if before else GENESIS
        ):
            return Problem(
                point.seq, f"checkpoint {number} does not follow checkpoint {number - 1}"
            )
        if point.prev is None and before is not None and before.prev is not None:
            return Problem(point.seq, f"checkpoint {number} is not chained (forged)")
        if before is not None and (point.seq < before.seq or point.at < before.at):
            return Problem(point.seq, f"checkpoint {number} goes back in the chain or in time")
        if hash_at.get(point.seq) != point.hash:
            return Problem(point.seq, f"event {point.seq} differs from signed checkpoint {number}")
        before = point
    return None


def _events(db: Session, after_seq: int = 0) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq)
    return list(db.scalars(query))


def _checkpoints(db: Session, after_number: int = 0) -> list[AuditCheckpoint]:
    query = select(AuditCheckpoint).where(AuditCheckpoint.number > after_number)
    return list(db.scalars(query.order_by(AuditCheckpoint.number)))


def _tip(
    db: Session, events: Sequence[AuditEvent], after_seq: int, after_hash: str
) -> Problem | None:
    """The head row names the last event (else events were cut from the end)."""
    head = db.get(AuditHead, 1)
    last_seq, last_hash = (events[-1].seq, events[-1].hash) if events else (after_seq, after_hash)
    if head is None or head.seq != last_seq or head.hash != last_hash:
        return Problem(
            last_seq + 1, f"event {last_seq + 1} and later are missing (removed from the end)"
        )
    return None


def _remembered(db: Session, signed: Signed) -> AuditCheckpoint | Problem:
    point = db.scalars(
        select(AuditCheckpoint).where(AuditCheckpoint.number == signed.number)
    ).first()
    if point is None or checkpoint_digest(point) != signed.digest:
        return Problem(
            signed.seq,
            f"checkpoint {signed.number}, the last this broker signed, is gone or changed",
        )
    return point


def since_last_signed(db: Session, signer: Signer) -> Problem | None:
    """The chain from the last checkpoint this broker signed to the tip, with its key.

    Without such a memory (a new broker, or one upgraded from before it kept one) the
    whole chain is checked once.
    """
    signed = signer.last_signed
    anchor: AuditCheckpoint | None = None
    if signed is not None:
        found = _remembered(db, signed)
        if isinstance(found, Problem):
            return found
        anchor = found
    after_seq, after_hash = (anchor.seq, anchor.hash) if anchor else (0, GENESIS)
    if anchor is not None:
        at_anchor = db.get(AuditEvent, anchor.seq)
        if at_anchor is None or at_anchor.hash != anchor.hash:
            return Problem(
                anchor.seq, f"event {anchor.seq} differs from signed checkpoint {anchor.number}"
            )
    events = _events(db, after_seq)
    problem = walk_events(events, after_seq, after_hash) or _tip(db, events, after_seq, after_hash)
    if problem is not None:
        return problem
    hash_at = {event.seq: event.hash for event in events} | {after_seq: after_hash}
    later = _checkpoints(db, anchor.number if anchor else 0)
    return walk_checkpoints(later, signer.verifier, signer.public_key, hash_at, anchor)


def _coverage(
    points: Sequence[AuditCheckpoint],
    events: Sequence[AuditEvent],
    now: datetime,
    settings: Settings,
) -> Problem | None:
    """Checkpoints reach close enough to the tip, in events and in time."""
    if not events:
        return None
    newest = points[-1] if points else None
    signed_seq = newest.seq if newest else 0
    unsigned = events[-1].seq - signed_seq
    if unsigned > settings.audit_max_unsigned_events:
        return Problem(
            signed_seq + 1,
            f"events {signed_seq + 1} to {events[-1].seq} are not covered by a checkpoint "
            f"({unsigned}, limit {settings.audit_max_unsigned_events}): later checkpoints "
            "were removed",
        )
    since = moment(newest.at) if newest else moment(events[0].at)
    age = (now - since).total_seconds()
    if age > settings.audit_max_checkpoint_age_s:
        what = f"the newest checkpoint ({newest.number})" if newest else "no checkpoint; the chain"
        return Problem(
            signed_seq + 1,
            f"{what} is {age / 60:.0f} min old (limit "
            f"{settings.audit_max_checkpoint_age_s / 60:.0f} min): later checkpoints were "
            "removed, or the broker stopped signing",
        )
    return None


def _witnessed(
    witnesses: Sequence[Witness], hash_at: dict[int, str], points: Sequence[AuditCheckpoint]
) -> Problem | None:
    digests = {point.number: checkpoint_digest(point) for point in points}
    for saved in witnesses:
        if hash_at.get(saved.seq) != saved.hash:
            state = "is missing" if saved.seq not in hash_at else "differs"
            return Problem(saved.seq, f"event {saved.seq} {state} from the digest a witness saved")
        if saved.number is not None and digests.get(saved.number) != saved.digest:
            return Problem(
                saved.seq, f"checkpoint {saved.number} differs from the digest a witness saved"
            )
    return None


def verify(
    db: Session,
    public_key: str,
    public: Ed25519PublicKey,
    *,
    now: datetime,
    settings: Settings,
    pinned: bool,
    signed: Signed | None = None,
    witnesses: Sequence[Witness] = (),
) -> Verification:
    """Everything: the whole chain, every checkpoint, coverage, the broker's memory of its
    last signature, and the witnesses' digests; names the first problem."""
    events = _events(db)
    points = _checkpoints(db)
    hash_at = {event.seq: event.hash for event in events}
    found: AuditCheckpoint | Problem | None = _remembered(db, signed) if signed else None
    problem = (
        walk_events(events, 0, GENESIS)
        or _tip(db, events, 0, GENESIS)
        or walk_checkpoints(points, public, public_key, hash_at)
        or _witnessed(witnesses, hash_at, points)
        or (found if isinstance(found, Problem) else None)
        or _coverage(points, events, now, settings)
    )
    newest = newest_checkpoint(db)
    return Verification(
        ok=problem is None,
        events=len(events),
        checkpoints=len(points),
        first_bad_seq=problem.seq if problem else None,
        problem=problem.text if problem else None,
        public_key=public_key,
        pinned=pinned,
        newest=checkpoint_dict(newest) if newest else None,
        witnesses=len(witnesses),
    )


def _shown_problem(db: Session, objects: Sequence[str]) -> Problem | None:
    """Each event about ``objects`` hashes as stored and the next event (or the head)
    names that hash."""
    shown = list(db.scalars(select(AuditEvent).where(AuditEvent.object.in_(objects))))
    nexts = select(AuditEvent.seq, AuditEvent.prev_hash).where(
        AuditEvent.seq.in_([event.seq + 1 for event in shown])
    )
    named = dict(db.execute(nexts).tuples().all())
    head = db.get(AuditHead, 1)
    if head is not None:
        named.setdefault(head.seq + 1, head.hash)
    for event in sorted(shown, key=lambda event: event.seq):
        if event_hash(event) != event.hash:
            return Problem(event.seq, f"event {event.seq} was edited (hash does not match content)")
        if named.get(event.seq + 1) != event.hash:
            return Problem(
                event.seq + 1, f"event {event.seq + 1} does not follow event {event.seq}"
            )
    return None


def verify_shown(db: Session, signer: Signer, objects: Sequence[str]) -> Verification:
    """What a page shows: the events about ``objects`` hash as stored and stay linked, and
    the chain from the last checkpoint this broker signed still leads to the tip. Costs the
    events shown plus those since the last checkpoint, not the whole chain."""
    problem = _shown_problem(db, objects) or since_last_signed(db, signer)
    head = db.get(AuditHead, 1)
    newest = newest_checkpoint(db)
    return Verification(
        ok=problem is None,
        events=head.seq if head else 0,
        checkpoints=newest.number if newest else 0,
        first_bad_seq=problem.seq if problem else None,
        problem=problem.text if problem else None,
        public_key=signer.public_key,
    )
