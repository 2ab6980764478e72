"""Engines and schema upgrades for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode and every writing transaction starts with ``BEGIN IMMEDIATE``:
writers queue on the database lock (``busy_timeout``) instead of failing when a read
transaction tries to upgrade, which is what keeps the audit chain and tunnel allocation
serial there. Read-only sessions (``READ_ONLY``) start a plain deferred ``BEGIN``: in WAL
mode they read a snapshot and never wait for, or block, a writer.

Durability on SQLite is chosen in the URL: ``?synchronous=normal`` (default) syncs the WAL
at checkpoints only, so a committed change survives a crash of the broker process but the
last transactions may be lost if the machine loses power; ``?synchronous=full`` syncs every
commit (several times slower per write). PostgreSQL uses row locks (``SELECT ... FOR
UPDATE``) and unique constraints instead, and its own durability settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
DB_FILE = "broker.db"
SQLITE_SYNCHRONOUS = ("normal", "full")
# Execution option of sessions that never write (token lookups, GETs, long-poll reads).
READ_ONLY = "ztb_read_only"
# pg_advisory_lock key of schema migrations (any constant; "ztb" + 1).
MIGRATION_LOCK_ID = 0x7A746201
BASE = "base"  # Alembic's name for "no schema"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / DB_FILE}"


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver the broker ships
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    synchronous = str(parsed.query.get("synchronous", "normal")).lower()
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(
            f"synchronous={synchronous!r} in the database URL: use one of "
            + ", ".join(SQLITE_SYNCHRONOUS)
        )
    engine = create_engine(
        parsed.difference_update_query(["synchronous"]),
        connect_args={"check_same_thread": False, "timeout": 30},
    )

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")  # wiped secrets leave no copy in free pages
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _refuse_writes(session: Session, _context: Any, _instances: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("a read-only database session tried to write")


def read_engine(engine: Engine) -> Engine:
    """The same pool, for transactions that only read: no write lock on SQLite (plain
    ``BEGIN``), ``READ ONLY`` on PostgreSQL."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
    return engine.execution_options(**options)


def read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that only reads (``read_engine``); flushing a change raises
    instead of upgrading the transaction."""
    factory = sessionmaker(read_engine(engine), expire_on_commit=False)
    event.listen(factory, "before_flush", _refuse_writes)
    return factory


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    """Read the migration scripts once per process (parsing them is most of an upgrade)."""
    return ScriptDirectory.from_config(_config())


def newest_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "no migration scripts shipped"
    return head


class SchemaError(RuntimeError):
    """The database schema cannot be used by this ztb; the message says what to do."""


@contextlib.contextmanager
def _migration_lock(engine: Engine, connection: Connection) -> Iterator[None]:
    """One migrator at a time per database: a PostgreSQL session advisory lock (held by
    ``connection``), or an exclusive ``flock`` on ``DB_FILE.migrate-lock`` beside a SQLite
    file. Replicas starting together queue here instead of racing on ``CREATE TABLE``."""
    if engine.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})")
        connection.commit()
        try:
            yield
        finally:
            connection.rollback()
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})")
            connection.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def current_revision(connection: Connection) -> str | None:
    revision = MigrationContext.configure(connection).get_current_revision()
    connection.commit()
    return revision


def check_revision(current: str | None) -> None:
    """Refuse a schema this code does not know: a newer release migrated it."""
    if current is None:
        return
    try:
        known = _scripts().get_revision(current)
    except CommandError:
        known = None
    if known is None:
        raise SchemaError(
            f"the database schema is at revision {current}, newer than this ztb knows "
            f"(up to {newest_revision()}): run the newer ztb, or downgrade the schema with "
            f"the newer ztb's 'ztb broker migrate --to {newest_revision()}' first"
        )


def migrate(engine: Engine, target: str | None = None) -> tuple[str | None, str]:
    """Bring the schema to ``target`` (default: the newest revision) under the migration
    lock; an older ``target`` (or ``"base"``: no tables) downgrades. Returns (revision
    before, revision after).
    Safe to run at every start: a schema already there is only checked."""
    wanted = target or newest_revision()
    with engine.connect() as connection:
        before = current_revision(connection)
        check_revision(before)
        if (before or BASE) == wanted:
            return before, wanted
        with _migration_lock(engine, connection):
            before = current_revision(connection)  # another replica may have done it
            check_revision(before)
            if (before or BASE) != wanted:
                _run_alembic(connection, before, wanted)
    return before, wanted


def _run_alembic(connection: Connection, before: str | None, wanted: str) -> None:
    newest_first = [script.revision for script in _scripts().walk_revisions()] + [BASE]
    if wanted not in newest_first:
        raise SchemaError(f"unknown schema revision {wanted!r} (known: {', '.join(newest_first)})")
    ahead = before is None or newest_first.index(wanted) < newest_first.index(before)
    config = _config()
    config.attributes["connection"] = connection
    with connection.begin():
        if ahead:
            command.upgrade(config, wanted)
        else:
            command.downgrade(config, wanted)
