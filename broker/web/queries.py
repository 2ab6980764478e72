"""What the pages show, read through the broker's read side (``broker.reads``) so the
visibility rules are the API's own; names (homes, people) are put in words for the reader."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from broker.audit_verify import Verification, verify_shown
from broker.auth import Principal, broker_of
from broker.reads import people, sessions

Json = dict[str, Any]


def when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def company_of(email: str) -> str:
    """The core keeps no company field; the email domain is the best honest hint."""
    return email.rpartition("@")[2] or "unknown"


_ROLE_WORDS = {
    "homeowner": "the homeowner",
    "admin": "an administrator",
    "technician": "a technician",
}


def actor_names(db: Session, viewer: Principal, actors: Iterable[str | None]) -> dict[str, str]:
    """Audit actors (``user:ID``, ``agent:ID``, ``policy:…``) in words for this viewer; a
    technician sees roles, not other people's email addresses."""
    wanted = {a for a in actors if a}
    users = people.roles_and_emails(
        db, (a.removeprefix("user:") for a in wanted if a.startswith("user:"))
    )
    names = {}
    for actor in wanted:
        kind, _, rest = actor.partition(":")
        user = users.get(rest) if kind == "user" else None
        if user is not None and rest == viewer.id:
            names[actor] = "you"
        elif user is not None:
            role, email = user
            names[actor] = email if viewer.role != "technician" else _ROLE_WORDS[role]
        elif kind == "agent":
            names[actor] = "the home's router"
        elif kind == "policy":
            rule = rest.rpartition("#")[2]
            names[actor] = (
                f"the home's rules (auto-approve rule {int(rule) + 1})"
                if rule.isdigit()
                else "the home's rules"
            )
        elif actor == "broker:expiry":
            names[actor] = "the broker (time ran out)"
        elif kind == "broker":
            names[actor] = "the broker"
    return names


def _bytes_by_device(usage: list[Json]) -> list[tuple[str, int]]:
    per_device: dict[str, int] = {}
    for grant in usage:
        label = f"{grant['device']} ({grant['device_ip']})"
        per_device[label] = per_device.get(label, 0) + int(grant["bytes"])
    return sorted(per_device.items())


def session_cards(
    request: Request,
    viewer: Principal,
    *states: str,
    session_ids: list[str] | None = None,
    with_usage: bool = False,
) -> list[Json]:
    """Visible sessions in ``states`` (newest first), each with its home and technician;
    ``with_usage`` adds bytes moved per device and the last handshake. One read."""
    broker = broker_of(request)
    with broker.read() as db:
        found = sessions.listed(db, viewer, states, session_ids=session_ids, with_usage=with_usage)
        names = actor_names(db, viewer, (item.session["approved_by"] for item in found))
    now = broker.clock()
    cards = []
    for item in found:
        session, email = item.session, item.technician_email
        expires = when(session["expires_at"])
        card = {
            "s": session,
            "home_name": item.home_name,
            "needs_totp": item.needs_totp,
            "tech_email": email or session["technician_id"],
            "company": company_of(email) if email else "unknown",
            "seconds_left": max(0, int((expires - now).total_seconds())) if expires else 0,
            "approver": names.get(session["approved_by"] or "", session["approved_by"]),
        }
        if with_usage:
            card["bytes_by_device"] = _bytes_by_device(item.usage)
            card["last_handshake"] = item.last_handshake
        cards.append(card)
    return cards


def audit_status(request: Request, cards: list[Json]) -> Verification:
    """The audit events of the sessions shown, and the chain since the last checkpoint."""
    broker = broker_of(request)
    with broker.read() as db:
        return verify_shown(db, broker.signer, [card["s"]["id"] for card in cards])


DURATION_CHOICES = (300, 900, 1800, 3600, 7200, 14400, 28800)


def shorter_durations(requested: int) -> list[int]:
    """What the homeowner may approve instead: the request itself or anything shorter."""
    return [requested, *(d for d in reversed(DURATION_CHOICES) if d < requested)]
