"""``ztb broker backup``: an owner-only online copy of the SQLite database, and the restore
the operations guide describes (backup + keys -> new data directory -> serve)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from broker.db.engine import DB_FILE
from ztb.cli import main

from .broker_harness import Harness, anyio_backend, harness
from .broker_process import served

__all__ = ["anyio_backend", "harness"]


async def _session_and_checkpoint(h: Harness) -> str:
    w = await h.world()
    sid = str((await h.request(w.tech_a, w.home_a, ["thermostat:tcp/443"]))["id"])
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={})
    await h.ok("POST", "/v1/audit/checkpoint", w.admin)
    return sid


@pytest.mark.anyio
async def test_backup_is_owner_only_from_creation_even_with_an_open_umask(
    harness: Harness, tmp_path: Path
) -> None:
    sid = await _session_and_checkpoint(harness)
    output = tmp_path / "backup.db"
    previous = os.umask(0)
    try:
        code = main(
            ["broker", "backup", "--data-dir", str(harness.data_dir), "--output", str(output)]
        )
    finally:
        os.umask(previous)
    assert code == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    with sqlite3.connect(output) as copy:
        assert copy.execute("SELECT state FROM sessions WHERE id = ?", (sid,)).fetchone()
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert not output.with_name("backup.db-wal").exists()


def test_backup_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "broker"
    data_dir.mkdir()
    sqlite3.connect(data_dir / DB_FILE).close()
    output = tmp_path / "backup.db"
    output.write_text("precious")
    argv = ["broker", "backup", "--data-dir", str(data_dir), "--output", str(output)]
    assert main(argv) == 1
    assert "exists" in capsys.readouterr().err
    assert output.read_text() == "precious"


def test_backup_of_postgresql_names_pg_dump_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["broker", "backup", "--db", "postgresql://ztb:s3cret@db.example/ztb"]
    assert main([*argv, "--output", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "pg_dump --format=custom" in err
    assert "s3cret" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.anyio
async def test_restore_into_a_new_data_dir_serves_the_sessions_and_a_valid_audit_chain(
    harness: Harness, tmp_path: Path
) -> None:
    sid = await _session_and_checkpoint(harness)
    w = await harness.world()
    backup = tmp_path / "backup.db"
    keys = tmp_path / "keys.json"
    assert (
        main(["broker", "backup", "--data-dir", str(harness.data_dir), "--output", str(backup)])
        == 0
    )
    assert (
        main(["broker", "export-keys", "--data-dir", str(harness.data_dir), "--output", str(keys)])
        == 0
    )

    restored = tmp_path / "restored"
    assert main(["broker", "import-keys", "--data-dir", str(restored), "--input", str(keys)]) == 0
    shutil.copy(backup, restored / DB_FILE)
    with served(restored) as broker:
        shown = broker.ztb(w.admin, "session", "show", sid, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["id"] == sid
        verified = broker.ztb(w.admin, "audit", "verify", "--json")
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["checkpoints"] >= 1
