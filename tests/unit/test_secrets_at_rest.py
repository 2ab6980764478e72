"""Secrets the broker must read back are sealed at rest with a key kept out of the database.

Issue 10 ("secrets sit in the database in clear: TOTP seeds, webhook secrets, live
pre-shared keys, broker-made private keys not yet downloaded"): the raw rows and the
SQLite file hold none of them; without the key file a copy of the database reveals none.
"""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from broker.app import create_app
from broker.config import Settings
from broker.db import sealing
from broker.db.engine import DB_FILE, MIGRATIONS, make_engine, migrate
from broker.db.models import AccessSession, Home
from broker.db.sealing import SealError, SecretBox
from broker.secret_key import KEY_FILE

from .broker_harness import BOTH_DATABASES, Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]

COLUMNS = (
    ("users", "totp_secret"),
    ("homes", "webhook_secret"),
    ("sessions", "preshared_key"),
    ("sessions", "private_key_once"),
)


@dataclass
class Planted:
    totp_seed: str
    webhook_secret: str
    preshared_key: str
    private_key: str

    def values(self) -> list[str]:
        return [self.totp_seed, self.webhook_secret, self.preshared_key, self.private_key]


async def plant_secrets(h: Harness) -> Planted:
    """One of each secret, through the API where it makes them (the webhook secret is set
    on the row: its URL rules belong to the webhook tests)."""
    w = await h.world()
    seed = (await h.ok("POST", "/v1/me/totp", w.owner_a))["secret"]
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)  # broker-made key pair
    webhook_secret = base64.b64encode(os.urandom(32)).decode()  # decodable below
    with h.broker.unit_of_work() as uow:
        home = uow.db.get(Home, w.home_a)
        assert home is not None
        home.webhook_url, home.webhook_secret = "https://hooks.example.com/ztb", webhook_secret
    with h.broker.read() as db:
        session = db.get(AccessSession, sid)
        assert session is not None and session.preshared_key and session.private_key_once
        return Planted(seed, webhook_secret, session.preshared_key, session.private_key_once)


def raw_values(url: str) -> list[str]:
    """The secret columns as stored, read without the broker (no key)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [
                value
                for table, column in COLUMNS
                for value in connection.execute(
                    text(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")  # noqa: S608
                ).scalars()
            ]
    finally:
        engine.dispose()


@BOTH_DATABASES
@pytest.mark.anyio
async def test_raw_rows_hold_no_plaintext_secret(harness: Harness) -> None:
    h = harness
    planted = await plant_secrets(h)
    stored = raw_values(h.broker.settings.database_url)
    assert len(stored) == 4, stored
    for value in stored:
        assert value.startswith(sealing.PREFIX), value
        assert not any(secret in value for secret in planted.values())
    # The broker itself still reads them: the agent gets the PSK, the TOTP seed checks codes.
    state = (await h.call("GET", "/v1/agent/state", (await h.world()).agent_a)).json()
    assert [s["preshared_key"] for s in state["sessions"]] == [planted.preshared_key]


@pytest.mark.anyio
async def test_sqlite_file_holds_no_plaintext_secret(harness: Harness) -> None:
    h = harness
    planted = await plant_secrets(h)
    h.broker.engine.dispose()
    files = [p for p in h.data_dir.iterdir() if p.name.startswith(DB_FILE)]
    raw = b"".join(p.read_bytes() for p in files)
    for secret in planted.values():
        assert secret.encode() not in raw, f"{secret} found in {[p.name for p in files]}"
    for key in (planted.preshared_key, planted.private_key):  # nor as raw key bytes
        assert base64.b64decode(key) not in raw


@pytest.mark.anyio
async def test_database_without_its_key_reveals_nothing(harness: Harness, tmp_path: Path) -> None:
    h = harness
    planted = await plant_secrets(h)
    h.broker.engine.dispose()
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    shutil.copy(h.data_dir / DB_FILE, stolen / DB_FILE)
    assert not (stolen / KEY_FILE).exists()

    # Another key opens none of the stored values.
    other = SecretBox(os.urandom(32))
    stored = raw_values(f"sqlite:///{stolen / DB_FILE}")
    for (table, column), value in zip(COLUMNS, stored, strict=True):
        with pytest.raises(SealError):
            other.open(value, f"{table}.{column}")
    assert not any(secret in value for value in stored for secret in planted.values())

    # A broker started on the copy refuses to make up a new key, or to use a wrong one.
    with pytest.raises(SealError, match="restore"):
        create_app(Settings(data_dir=stolen))
    wrong = tmp_path / "wrong.key"
    wrong.write_text(base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SealError, match="does not match"):
        create_app(Settings(data_dir=stolen, secret_key_file=wrong))
    # With the key (here from a file a secret store would deliver), everything opens.
    app = create_app(Settings(data_dir=stolen, secret_key_file=h.data_dir / KEY_FILE))
    try:
        with app.state.broker.read() as db:
            home = db.get(Home, (await h.world()).home_a)
            assert home is not None and home.webhook_secret == planted.webhook_secret
    finally:
        app.state.broker.engine.dispose()


def test_key_file_is_owner_only_and_not_replaced(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "broker"))
    app.state.broker.engine.dispose()
    key_file = tmp_path / "broker" / KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    first = key_file.read_bytes()
    create_app(Settings(data_dir=tmp_path / "broker")).state.broker.engine.dispose()
    assert key_file.read_bytes() == first


def test_sealed_value_opens_only_in_its_own_column() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("JBSWY3DPEHPK3PXP", "users.totp_secret")
    assert box.open(sealed, "users.totp_secret") == "JBSWY3DPEHPK3PXP"
    with pytest.raises(SealError):
        box.open(sealed, "homes.webhook_secret")
    with pytest.raises(SealError):
        box.open("JBSWY3DPEHPK3PXP", "users.totp_secret")  # plaintext is never taken as sealed


def _alembic(engine_url: str, box: SecretBox, target: str, down: bool = False) -> None:
    engine = make_engine(engine_url)
    sealing.attach(engine, box)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, target)
    finally:
        engine.dispose()


def test_migration_seals_existing_plaintext_and_downgrade_opens_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    box = SecretBox(os.urandom(32))
    _alembic(url, box, "0002")  # the schema before sealing, filled as the old broker did
    now = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)
    plain = {"seed": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "hook": "hook-secret-" + "x" * 30}
    plain |= {
        "psk": base64.b64encode(b"p" * 32).decode(),
        "key": base64.b64encode(b"k" * 32).decode(),
    }
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "INSERT INTO users (id, email, role, totp_secret, totp_enabled, totp_last_step,"
            " created_at) VALUES ('usr_1', 'o@example.com', 'homeowner', ?, 1, 0, ?)",
            (plain["seed"], now),
        )
        db.execute(
            "INSERT INTO homes (id, name, owner_id, lan, router_ip, tunnel_pool, webhook_secret,"
            " require_totp_for_approval, policy, revision, created_at) VALUES ('hom_1', 'h',"
            " 'usr_1', '192.168.1.0/24', '192.168.1.1', '100.64.0.0/24', ?, 0, '{}', 1, ?)",
            (plain["hook"], now),
        )
        db.execute(
            "INSERT INTO sessions (id, home_id, technician_id, state, reason, grants,"
            " pending_grants, duration_s, requested_at, key_origin, preshared_key,"
            " private_key_once, config_downloads, counters) VALUES ('ses_1', 'hom_1', 'usr_1',"
            " 'approved', 'r', '[]', '[]', 60, ?, 'broker', ?, ?, 0, '{}')",
            (now, plain["psk"], plain["key"]),
        )

    engine = make_engine(url)
    sealing.attach(engine, box)
    migrate(engine)
    engine.dispose()
    stored = raw_values(url)
    assert all(v.startswith(sealing.PREFIX) for v in stored), stored
    assert not any(secret in v for v in stored for secret in plain.values())
    opened = [box.open(v, f"{t}.{c}") for (t, c), v in zip(COLUMNS, stored, strict=True)]
    assert opened == [plain["seed"], plain["hook"], plain["psk"], plain["key"]]

    _alembic(url, box, "0002", down=True)
    assert raw_values(url) == opened
