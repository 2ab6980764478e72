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

import functools
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
DB_FILE = "broker.db"
SQLITE_SYNCHRONOUS = ("normal", "full")
# Execution option of sessions that never write (token lookups, GETs, long-poll reads).
READ_ONLY = "ztb_read_only"


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
def _newest_revision() -> str | None:
    """Read the migration scripts once per process (parsing them is most of an upgrade)."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to run at every start."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and current == _newest_revision():
        return
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
