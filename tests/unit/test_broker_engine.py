"""Database engine choices: SQLite durability in the URL, read-only sessions, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from broker.db.engine import make_engine, migrate, read_session_factory
from broker.db.models import AuditHead


def _synchronous(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("PRAGMA synchronous")).scalar_one())
    finally:
        engine.dispose()


def test_sqlite_durability_is_chosen_in_the_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    assert _synchronous(url) == 1  # NORMAL: survives a process crash
    assert _synchronous(url + "?synchronous=full") == 2  # FULL: survives power loss
    with pytest.raises(ValueError, match="synchronous='off'"):
        make_engine(url + "?synchronous=off")


def test_read_only_sessions_refuse_to_write(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        migrate(engine)
        migrate(engine)  # at the newest revision already: only checked
        factory = read_session_factory(engine)
        with factory() as db:
            head = db.get(AuditHead, 1)
            assert head is not None and head.seq == 0
            head.seq = 5
            with pytest.raises(RuntimeError, match="read-only"):
                db.commit()
    finally:
        engine.dispose()
