"""The names people read ids by: home names and user emails next to the ids in API answers.

``ztb`` prints these instead of ``home_…``/``usr_…`` ids; ``--json`` keeps both, so scripts
still key on ids. Looked up in one query per kind however many rows an answer holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import Home, User

_USER_ACTOR = "user:"


@dataclass(frozen=True, slots=True)
class Names:
    homes: dict[str, str]  # home id -> name
    emails: dict[str, str]  # user id -> email

    def actor(self, actor: str | None) -> str | None:
        """``user:<id>`` as the user's email; other actors (agents, the broker) as they are."""
        if actor and actor.startswith(_USER_ACTOR):
            return self.emails.get(actor.removeprefix(_USER_ACTOR), actor)
        return actor


def names_for(
    db: Session,
    *,
    home_ids: Iterable[str] = (),
    user_ids: Iterable[str | None] = (),
    actors: Iterable[str | None] = (),
) -> Names:
    users = {u for u in user_ids if u}
    users |= {a.removeprefix(_USER_ACTOR) for a in actors if a and a.startswith(_USER_ACTOR)}
    homes = set(home_ids)
    home_rows = db.execute(select(Home.id, Home.name).where(Home.id.in_(homes))) if homes else ()
    user_rows = db.execute(select(User.id, User.email).where(User.id.in_(users))) if users else ()
    return Names(
        homes={row.id: row.name for row in home_rows},
        emails={row.id: row.email for row in user_rows},
    )


def session_names(session: dict[str, Any], names: Names) -> dict[str, Any]:
    """A session view with ``home_name``, ``technician_email`` and the actors' names added."""
    return {
        **session,
        "home_name": names.homes.get(session["home_id"]),
        "technician_email": names.emails.get(session["technician_id"]),
        "approved_by_name": names.actor(session.get("approved_by")),
        "ended_by_name": names.actor(session.get("ended_by")),
    }


def names_of_sessions(db: Session, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = names_for(
        db,
        home_ids=(s["home_id"] for s in sessions),
        user_ids=(s["technician_id"] for s in sessions),
        actors=(a for s in sessions for a in (s.get("approved_by"), s.get("ended_by"))),
    )
    return [session_names(s, names) for s in sessions]
