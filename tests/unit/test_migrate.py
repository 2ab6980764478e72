"""Schema migrations: every step downgrades, a filled database survives a downgrade to the
previous release's schema and the upgrade back, a newer schema is refused, and migrators
take turns under the lock (SQLite file lock here; PostgreSQL in test_replicas.py)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from broker.db.engine import (
    BASE,
    DB_FILE,
    SchemaError,
    _scripts,
    make_engine,
    migrate,
    newest_revision,
    sqlite_url,
)
from broker.db.models import Base

from .broker_harness import Template
from .broker_process import refused_start, served, ztb
from .postgres_server import PostgresServer

# Tables whose rows the world holds; a round trip must keep every one of them.
FILLED_TABLES = ("users", "homes", "devices", "agents", "audit_events")


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _revisions_newest_first() -> list[str]:
    return [script.revision for script in _scripts().walk_revisions()]


def _previous_release() -> str:
    """The schema of the release before this one: the newest revision's parent."""
    return _revisions_newest_first()[1]


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _counts(engine: Engine) -> dict[str, int]:
    tables = Base.metadata.tables
    with engine.connect() as connection:
        return {
            name: connection.execute(select(func.count()).select_from(tables[name])).scalar_one()
            for name in FILLED_TABLES
        }


def _step_by_step_round_trip(engine: Engine) -> None:
    newest_first = _revisions_newest_first()
    assert migrate(engine) == (None, newest_first[0])
    for older in [*newest_first[1:], BASE]:
        migrate(engine, older)
    with engine.connect() as connection:
        assert not connection.dialect.has_table(connection, "users")
    for newer in reversed(newest_first):
        migrate(engine, newer)
    assert _revision(engine) == newest_first[0]


def test_every_migration_downgrades_and_upgrades_again_on_sqlite(tmp_path: Path) -> None:
    with _engine(sqlite_url(tmp_path)) as engine:
        _step_by_step_round_trip(engine)


def test_every_migration_downgrades_and_upgrades_again_on_postgresql(
    postgres_server: PostgresServer,
) -> None:
    with _engine(postgres_server.url(postgres_server.create_database())) as engine:
        _step_by_step_round_trip(engine)


def _filled_round_trip(engine: Engine) -> None:
    filled = _counts(engine)
    assert all(filled.values()), filled
    assert migrate(engine, _previous_release()) == (newest_revision(), _previous_release())
    assert _counts(engine) == filled
    assert migrate(engine) == (_previous_release(), newest_revision())
    assert _counts(engine) == filled


def test_a_filled_sqlite_database_goes_to_the_previous_release_and_back(
    sqlite_template: Template, tmp_path: Path
) -> None:
    data_dir = tmp_path / "broker"
    shutil.copytree(sqlite_template.data_dir, data_dir)
    with _engine(sqlite_url(data_dir)) as engine:
        _filled_round_trip(engine)


def test_a_filled_postgresql_database_goes_to_the_previous_release_and_back(
    postgres_server: PostgresServer, postgres_template: Template
) -> None:
    database = postgres_server.create_database(template=postgres_template.database)
    with _engine(postgres_server.url(database)) as engine:
        _filled_round_trip(engine)


def _stamp_newer(engine: Engine) -> None:
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))


def test_a_newer_schema_is_refused_by_migrate_and_serve(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    data_dir.mkdir()
    with _engine(sqlite_url(data_dir)) as engine:
        _stamp_newer(engine)
        with pytest.raises(SchemaError, match="9999, newer than this ztb"):
            migrate(engine)
    migrated = ztb("broker", "migrate", "--data-dir", str(data_dir))
    assert migrated.returncode == 1
    assert "newer than this ztb" in migrated.stderr
    assert "newer than this ztb" in refused_start(data_dir).splitlines()[-1]


def test_migrate_command_upgrades_and_rolls_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    up = ztb("broker", "migrate", "--data-dir", str(data_dir), "--json")
    assert up.returncode == 0, up.stderr
    assert f'"after": "{newest_revision()}"' in up.stdout
    assert (data_dir / DB_FILE).exists()
    down = ztb("broker", "migrate", "--data-dir", str(data_dir), "--to", _previous_release())
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"schema at {_previous_release()} (was {newest_revision()})"
    unknown = ztb("broker", "migrate", "--data-dir", str(data_dir), "--to", "nope")
    assert unknown.returncode == 1
    assert "unknown schema revision 'nope'" in unknown.stderr


def test_sqlite_migrators_take_turns(tmp_path: Path) -> None:
    """Four engines migrate one empty file at once: all finish, the schema is made once."""
    engines = [make_engine(sqlite_url(tmp_path)) for _ in range(4)]
    results: list[tuple[str | None, str]] = []
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            results.append(migrate(engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert sorted(results, key=str) == sorted(
        [(None, newest_revision())] + [(newest_revision(), newest_revision())] * 3, key=str
    )


def test_serve_upgrades_a_filled_database_of_the_previous_release(
    sqlite_template: Template, tmp_path: Path
) -> None:
    """Under the previous release there was no recorded identity: the first start of the
    new code migrates (under the lock) and adopts the data directory's keys."""
    data_dir = tmp_path / "broker"
    shutil.copytree(sqlite_template.data_dir, data_dir)
    down = ztb("broker", "migrate", "--data-dir", str(data_dir), "--to", _previous_release())
    assert down.returncode == 0, down.stderr
    with served(data_dir) as broker:
        verified = broker.ztb(sqlite_template.world.admin, "audit", "verify")
        assert verified.returncode == 0, verified.stderr
    with _engine(sqlite_url(data_dir)) as engine:
        assert _revision(engine) == newest_revision()
