"""A throwaway PostgreSQL cluster for the broker tests: ``initdb`` + ``pg_ctl`` as the
``postgres`` user in a temporary directory, reachable only through a Unix socket there.

Missing PostgreSQL skips the tests that need it, except under ``CI=true``, where it fails:
the broker claims PostgreSQL support, so CI must prove it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.prerequisites import unavailable

START_TIMEOUT_S = 30
PG_USER = "postgres"


def _binaries() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them out of PATH)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name),
    )
    return versions[-1].parent if versions else None


def postgres_missing() -> str | None:
    """Why no throwaway cluster can start here, or None."""
    if _binaries() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} user to run the cluster as"
    if os.geteuid() != 0:
        return "starting a cluster as the postgres user needs root"
    return None


@dataclass(frozen=True, slots=True)
class PostgresServer:
    socket_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@/{database}?host={self.socket_dir}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(sql))
        finally:
            engine.dispose()

    def create_database(self, template: str | None = None) -> str:
        name = f"ztb_{uuid.uuid4().hex[:12]}"
        suffix = f" TEMPLATE {template}" if template else ""
        self.admin(f"CREATE DATABASE {name}{suffix}")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", PG_USER, "--", *argv],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 30,
        check=False,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    missing = postgres_missing()
    if missing is not None:
        unavailable(missing)
    binaries = _binaries()
    assert binaries is not None
    root = Path(tempfile.mkdtemp(prefix="ztb-pg-"))
    shutil.chown(root, PG_USER, PG_USER)
    data = root / "data"
    started = False
    try:
        init = _as_postgres(
            str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER,
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        # No TCP listener at all; fsync off: the cluster is thrown away after the run.
        options = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=200"
        start = _as_postgres(
            str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
            "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        started = start.returncode == 0
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        assert started, start.stderr + log
        yield PostgresServer(root)
    finally:
        if started:
            _as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                         "stop")  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
