"""First start of a broker: data directory, schema, signing key, first admin.

Preparation is a list of steps over the data directory (``STEPS``): owner-only directory;
the schema (migrated under the migration lock) and the deployment's identity (the CA
``ca.pem``/``ca.key`` and the audit-signing key, checked against the database, minted only
for a new deployment: ``broker.deployment``); then the HTTPS certificate for
``settings.tls_names``. ``serve`` runs the steps too, so a fresh directory on a fresh
database works, a changed ``--tls-name`` gets a new cert, and a replica with the wrong
keys stops before it serves anything.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from . import audit, pki, secret_key
from .app import create_app
from .clock import Clock, system_clock
from .config import Settings
from .context import Broker
from .db.engine import make_engine, migrate
from .db.models import User
from .deployment import check_before_migrating, ensure_identity
from .users_service import create_user, issue_token

Step = Callable[[Settings, datetime], None]


def prepare_data_dir(settings: Settings, now: datetime) -> None:
    """The data directory holds keys: owner-only."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)


def prepare_schema_and_pki(settings: Settings, now: datetime) -> None:
    """The schema, the deployment's keys (checked or minted), and the broker's own HTTPS
    certificate signed by the deployment's CA."""
    engine = make_engine(settings.database_url)
    try:
        check_before_migrating(settings, engine)
        box = secret_key.attach_key(settings, engine)  # migrations seal or open secrets
        migrate(engine)
        secret_key.check_fingerprint(engine, box)
        ca = ensure_identity(settings, engine, now)
    finally:
        engine.dispose()
    pki.ensure_server_certificate(settings.data_dir, ca, settings.tls_names, now)


STEPS: list[Step] = [prepare_data_dir, prepare_schema_and_pki]


def prepare(settings: Settings, clock: Clock = system_clock) -> None:
    for step in STEPS:
        step(settings, clock())


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
    prepare(settings, clock)
    broker: Broker = create_app(settings, clock=clock).state.broker
    try:
        admin = first_admin(broker, email)
        audit.sign_tip(broker)  # the first checkpoint: the chain is covered from the start
        return {**admin, "audit_public_key": broker.signer.public_key}
    finally:
        broker.engine.dispose()
