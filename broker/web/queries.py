"""What the pages show, read through the API's own functions so visibility rules are the
same; names (homes, people, devices) are added for the reader."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import select

from broker import audit
from broker.auth import Principal, broker_of
from broker.db.models import Home, User
from broker.routes import sessions as api

Json = dict[str, Any]


def when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def company_of(email: str) -> str:
    """The core keeps no company field; the email domain is the best honest hint."""
    return email.rpartition("@")[2] or "unknown"


def _names(request: Request, sessions: Iterable[Json]) -> tuple[dict[str, Home], dict[str, User]]:
    items = list(sessions)
    home_ids = {s["home_id"] for s in items}
    user_ids = {s["technician_id"] for s in items}
    with broker_of(request).sessionmaker() as db:
        homes = {h.id: h for h in db.scalars(select(Home).where(Home.id.in_(home_ids)))}
        users = {u.id: u for u in db.scalars(select(User).where(User.id.in_(user_ids)))}
    return homes, users


_ROLE_WORDS = {
    "homeowner": "the homeowner",
    "admin": "an administrator",
    "technician": "a technician",
}


def actor_names(
    request: Request, viewer: Principal, actors: Iterable[str | None]
) -> dict[str, str]:
    """Audit actors (``user:ID``, ``agent:ID``, ``policy:…``) in words for this viewer; a
    technician sees roles, not other people's email addresses."""
    wanted = {a for a in actors if a}
    ids = {a.removeprefix("user:") for a in wanted if a.startswith("user:")}
    with broker_of(request).sessionmaker() as db:
        users = {u.id: u for u in db.scalars(select(User).where(User.id.in_(ids)))}
    names = {}
    for actor in wanted:
        kind, _, rest = actor.partition(":")
        user = users.get(rest) if kind == "user" else None
        if user is not None and user.id == viewer.id:
            names[actor] = "you"
        elif user is not None:
            names[actor] = user.email if viewer.role != "technician" else _ROLE_WORDS[user.role]
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


def session_cards(request: Request, viewer: Principal, *states: str) -> list[Json]:
    """Visible sessions in ``states`` (newest first), each with its home and technician."""
    found: list[Json] = []
    for state in states:
        found += api.list_sessions(request, viewer, state=state)["sessions"]
    found.sort(key=lambda s: s["requested_at"], reverse=True)
    homes, users = _names(request, found)
    now = broker_of(request).clock()
    names = actor_names(request, viewer, (s["approved_by"] for s in found))
    cards = []
    for session in found:
        home = homes.get(session["home_id"])
        tech = users.get(session["technician_id"])
        expires = when(session["expires_at"])
        cards.append(
            {
                "s": session,
                "home_name": home.name if home else session["home_id"],
                "needs_totp": bool(home and home.require_totp_for_approval),
                "tech_email": tech.email if tech else session["technician_id"],
                "company": company_of(tech.email) if tech else "unknown",
                "seconds_left": max(0, int((expires - now).total_seconds())) if expires else 0,
                "approver": names.get(session["approved_by"] or "", session["approved_by"]),
            }
        )
    return cards


def with_usage(request: Request, viewer: Principal, cards: list[Json]) -> list[Json]:
    """Add bytes moved per device and the last handshake (from the session report)."""
    for card in cards:
        report = api.report(request, viewer, card["s"]["id"])
        per_device: dict[str, int] = {}
        for grant in report["grants"]:
            label = f"{grant['device']} ({grant['device_ip']})"
            per_device[label] = per_device.get(label, 0) + int(grant["bytes"])
        card["bytes_by_device"] = sorted(per_device.items())
        card["last_handshake"] = report["last_handshake"]
    return cards


def audit_status(request: Request) -> audit.Verification:
    broker = broker_of(request)
    with broker.sessionmaker() as db:
        return audit.verify(db, broker.signer.public_key)


DURATION_CHOICES = (300, 900, 1800, 3600, 7200, 14400, 28800)


def shorter_durations(requested: int) -> list[int]:
    """What the homeowner may approve instead: the request itself or anything shorter."""
    return [requested, *(d for d in reversed(DURATION_CHOICES) if d < requested)]
