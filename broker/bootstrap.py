"""First start of a broker: data directory, schema, signing key, first admin.

Preparation is a list of steps over the data directory (``STEPS``); the CA step of the PKI
work joins that list without touching the others. Schema and the audit signing key come
with the app itself (``create_app``), so ``serve`` on a fresh directory works too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .app import create_app
from .clock import Clock, system_clock
from .config import Settings
from .context import Broker
from .db.models import User
from .users_service import create_user, issue_token

Step = Callable[[Settings, datetime], None]


def prepare_data_dir(settings: Settings, now: datetime) -> None:
    """The data directory holds keys: owner-only."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)


STEPS: list[Step] = [prepare_data_dir]


def first_admin(broker: Broker, email: str) -> dict[str, Any]:
    """Create the first admin and their token; refuse if an admin exists already."""
    with broker.unit_of_work() as uow:
        if uow.db.scalars(select(User.id).where(User.role == "admin")).first():
            raise RuntimeError(f"{broker.settings.data_dir} is already bootstrapped")
        user = create_user(uow, "broker:bootstrap", email, "admin", None)
        token = issue_token(uow, user.id, "bootstrap", broker.settings.api_token_ttl_s)
    return {"id": user.id, "email": user.email, **token}


def bootstrap(
    settings: Settings, email: str = "admin@localhost", clock: Clock = system_clock
) -> dict[str, Any]:
    for step in STEPS:
        step(settings, clock())
    broker: Broker = create_app(settings, clock=clock).state.broker
    try:
        return first_admin(broker, email)
    finally:
        broker.engine.dispose()
