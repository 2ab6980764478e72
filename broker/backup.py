"""``ztb broker backup``: a consistent copy of a running broker's SQLite database.

SQLite's online backup API copies the pages under a read transaction, so the copy is one
consistent snapshot while the broker keeps serving (WAL mode lets writers go on). The
file holds hashed tokens, TOTP seeds and webhook secrets: it is created owner-only
(``O_EXCL``, mode 0600) before a byte is written, never chmod-ed afterwards, and an
existing file is never overwritten.

PostgreSQL has its own tool for this (``pg_dump``); ``pg_dump_hint`` says how.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sqlalchemy import make_url

BACKUP_MODE = 0o600


class BackupError(RuntimeError):
    """The backup cannot be made; the message says why and what to do."""


def pg_dump_hint(url: str, output: Path) -> str:
    """The command that backs up a PostgreSQL broker database (password not repeated)."""
    parsed = make_url(url).set(drivername="postgresql")
    safe = parsed.render_as_string(hide_password=True).replace(":***@", "@")
    return (
        f"PostgreSQL databases are backed up with pg_dump: "
        f"umask 077; pg_dump --format=custom --file {output} '{safe}'"
    )


def backup_sqlite(database: Path, output: Path) -> int:
    """Copy ``database`` to ``output`` (new file, 0600); returns the pages copied."""
    if not database.is_file():
        raise BackupError(f"no broker database at {database}")
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, BACKUP_MODE)
    except FileExistsError:
        raise BackupError(f"{output} exists; choose a new file name") from None
    except OSError as exc:
        raise BackupError(f"cannot create {output}: {exc.strerror}") from None
    os.close(fd)
    pages = 0
    try:
        source = sqlite3.connect(database)
        target = sqlite3.connect(output)
        with contextlib.closing(source), contextlib.closing(target):
            source.execute("PRAGMA busy_timeout=30000")

            def progress(_status: int, remaining: int, total: int) -> None:
                nonlocal pages
                pages = total - remaining

            source.backup(target, progress=progress)
            # A single self-contained file: no -wal/-shm beside the copy.
            target.execute("PRAGMA journal_mode=DELETE")
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return pages
