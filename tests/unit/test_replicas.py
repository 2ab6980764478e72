"""Several ``ztb broker serve`` replicas on one PostgreSQL database share one identity:
the second, given the first's keys, serves the same CA and verifies the same audit chain;
one with a fresh data directory refuses to start; replicas started together on an empty
database all come up (migrations take turns under the advisory lock)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

from .broker_process import (
    free_port,
    refused_start,
    serve_argv,
    served,
    start,
    stop,
    wait_until_serving,
    ztb,
)
from .postgres_server import PostgresServer

STDIN = ("--input", "-")


def _bootstrap(data_dir: Path, db: str | None = None) -> str:
    argv = ["broker", "bootstrap", "--data-dir", str(data_dir), "--json"]
    done = ztb(*argv, *(["--db", db] if db else []))
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


def _export(source: Path) -> str:
    exported = ztb("broker", "export-keys", "--data-dir", str(source), "--output", "-")
    assert exported.returncode == 0, exported.stderr
    return exported.stdout


def _import(target: Path, document: str) -> None:
    """What an operator pipes from a secret store: the keys on standard input."""
    done = subprocess.run(
        [sys.executable, "-m", "ztb", "broker", "import-keys", "--data-dir", str(target), *STDIN],
        input=document,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _server_certificate(url: str, ca_cert: Path) -> bytes:
    """The replica's HTTPS certificate, fetched trusting only ``ca_cert`` (else raises)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)), ca_certs=str(ca_cert))
    return ssl.PEM_cert_to_DER_cert(pem)


def test_a_second_replica_with_the_first_ones_keys_is_the_same_deployment(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = postgres_server.url(postgres_server.create_database())
    first, second = tmp_path / "first", tmp_path / "second"
    admin = _bootstrap(first, db)
    _import(second, _export(first))
    assert (second / "ca.pem").read_text() == (first / "ca.pem").read_text()
    with served(first, db) as one, served(second, db) as two:
        # The second replica's HTTPS chains to the first one's CA: clients keep one CA file.
        assert _server_certificate(two.url, one.ca_cert)
        made = one.ztb(admin, "user", "create", "tina@example.com", "--role", "technician")
        assert made.returncode == 0, made.stderr
        for replica in (one, two):
            # Each replica is asked with the first one's CA file.
            verified = ztb(
                "audit",
                "verify",
                "--json",
                env={
                    "ZTB_BROKER": replica.url,
                    "ZTB_TOKEN": admin,
                    "ZTB_CA_CERT": str(one.ca_cert),
                },
            )
            assert verified.returncode == 0, verified.stderr
            assert json.loads(verified.stdout)["ok"] is True


def test_a_replica_with_a_fresh_data_dir_refuses_to_start_and_says_how_to_fix_it(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = postgres_server.url(postgres_server.create_database())
    _bootstrap(tmp_path / "first", db)
    fresh = tmp_path / "fresh"
    message = refused_start(fresh, db).splitlines()[-1]
    assert "does not hold this deployment's keys" in message
    assert "ztb broker import-keys" in message
    assert not (fresh / "ca.pem").exists(), "a CA was minted over an existing database"
    migrated = ztb("broker", "migrate", "--data-dir", str(fresh), "--db", db)
    assert migrated.returncode != 0
    assert "ztb broker import-keys" in migrated.stderr
    other = tmp_path / "other"
    _bootstrap(other)  # keys of another deployment (its own SQLite)
    assert "does not hold this deployment's keys" in refused_start(other, db)


def test_replicas_started_together_on_an_empty_database_all_come_up(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = postgres_server.url(postgres_server.create_database())
    source = tmp_path / "keys-source"
    _bootstrap(source)  # makes a key set on its own SQLite database
    keys = _export(source)
    replicas = [tmp_path / f"replica-{n}" for n in range(3)]
    for data_dir in replicas:
        _import(data_dir, keys)
    ports = [free_port() for _ in replicas]
    processes = [start(serve_argv(d, p, db)) for d, p in zip(replicas, ports, strict=True)]
    try:
        for process, data_dir, port in zip(processes, replicas, ports, strict=True):
            wait_until_serving(process, f"https://127.0.0.1:{port}", data_dir / "ca.pem")
    finally:
        for process in processes:
            stop(process)


def test_exported_keys_are_owner_only_and_never_overwrite(tmp_path: Path) -> None:
    source = tmp_path / "broker"
    _bootstrap(source)
    keys = tmp_path / "keys.json"
    argv = ["broker", "export-keys", "--data-dir", str(source), "--output", str(keys)]
    assert ztb(*argv).returncode == 0
    assert keys.stat().st_mode & 0o777 == 0o600
    again = ztb(*argv)
    assert again.returncode != 0
    assert "exists" in again.stderr


def test_import_refuses_a_data_dir_holding_another_deployments_keys(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _bootstrap(first)
    _bootstrap(second)
    done = subprocess.run(
        [sys.executable, "-m", "ztb", "broker", "import-keys", "--data-dir", str(second), *STDIN],
        input=_export(first),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "already holds other keys" in done.stderr
    assert (second / "ca.pem").read_text() != (first / "ca.pem").read_text()


def test_an_existing_sqlite_database_is_never_given_a_new_ca(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    _bootstrap(data_dir)
    for key_file in ("ca.pem", "ca.key"):
        (data_dir / key_file).unlink()
    message = refused_start(data_dir).splitlines()[-1]
    assert "does not hold this deployment's keys" in message
    assert not (data_dir / "ca.pem").exists()
