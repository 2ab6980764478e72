"""``ztb broker serve|bootstrap``: run the broker, or prepare its data directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from broker.config import Settings
from broker.pki import CA_CERT_FILE, fingerprint

app = typer.Typer(help="Run or bootstrap the broker service.", no_args_is_help=True)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", envvar="ZTB_DATA_DIR", help="Broker state: database, keys."),
]


def _settings(data_dir: Path, db: str | None) -> Settings:
    """Enrollment tokens pin the CA when the data directory has one."""
    ca_file = data_dir / CA_CERT_FILE
    ca_fingerprint = (
        fingerprint(x509.load_pem_x509_certificate(ca_file.read_bytes()))
        if ca_file.exists()
        else None
    )
    return Settings(data_dir=data_dir, db_url=db, ca_fingerprint=ca_fingerprint)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"must be HOST:PORT, not {text!r}", param_hint="--listen")
    return host.strip("[]") or "127.0.0.1", int(port)


@app.command()
def serve(
    data_dir: DataDir = Path("/var/lib/ztb-broker"),
    db: Annotated[
        str | None, typer.Option("--db", envvar="ZTB_DB", help="Database URL (default: SQLite).")
    ] = None,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to bind.")] = "127.0.0.1:8080",
) -> None:
    """Serve the HTTP API (plain HTTP; TLS and mTLS come from the PKI work)."""
    import uvicorn

    from broker.app import create_app
    from broker.jsonlog import configure

    host, port = _listen(listen)
    configure(logging.INFO)
    settings = _settings(data_dir, db)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


@app.command()
def bootstrap(
    data_dir: DataDir,
    email: Annotated[str, typer.Option("--email", help="The first admin's email.")] = (
        "admin@localhost"
    ),
    db: Annotated[str | None, typer.Option("--db", envvar="ZTB_DB")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create the data directory, schema, keys and the first admin; print the admin token."""
    from broker.bootstrap import bootstrap as run_bootstrap

    settings = _settings(data_dir, db)
    result = run_bootstrap(settings, email)
    if as_json:
        typer.echo(json.dumps({**result, "data_dir": str(data_dir)}))
    else:
        typer.echo(result["token"])
