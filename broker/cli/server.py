"""``ztb broker serve|bootstrap|migrate|backup|export-keys|import-keys``: run the broker,
prepare its data directory and schema, back it up, give a replica the deployment's keys."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from broker.config import DEFAULT_MAX_TOKEN_TTL_S, Settings

app = typer.Typer(
    help="Run or bootstrap the broker service.", no_args_is_help=True, add_completion=False
)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", envvar="ZTB_DATA_DIR", help="Broker state: database, keys."),
]
Db = Annotated[
    str | None, typer.Option("--db", envvar="ZTB_DB", help="Database URL (default: SQLite).")
]
TlsNames = Annotated[
    list[str] | None,
    typer.Option(
        "--tls-name",
        envvar="ZTB_TLS_NAME",
        help="DNS name or IP agents and clients dial (repeat); the HTTPS certificate names "
        "them. Default: localhost, 127.0.0.1 and the --listen host.",
        show_default=False,
    ),
]
DEFAULT_TLS_NAMES = ("localhost", "127.0.0.1")


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"must be HOST:PORT, not {text!r}", param_hint="--listen")
    return host.strip("[]") or "127.0.0.1", int(port)


def _tls_names(
    given: list[str] | None, listen_host: str | None, data_dir: Path | None = None
) -> tuple[str, ...]:
    """Given names win; then those of the certificate ``bootstrap`` made (so ``serve``
    without ``--tls-name`` keeps them); else the defaults plus a concrete listen address."""
    if given:
        return tuple(dict.fromkeys(given))
    if data_dir is not None and (existing := _certificate_names(data_dir)):
        return existing
    names = list(DEFAULT_TLS_NAMES)
    if listen_host and not _is_wildcard(listen_host):
        names.append(listen_host)
    return tuple(dict.fromkeys(names))


def _certificate_names(data_dir: Path) -> tuple[str, ...]:
    from cryptography import x509

    from broker.pki import SERVER_CERT_FILE

    try:
        cert = x509.load_pem_x509_certificate((data_dir / SERVER_CERT_FILE).read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return ()
    addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*san.get_values_for_type(x509.DNSName), *addresses)


def _networks(cidrs: list[str] | None) -> tuple[str, ...]:
    from broker.webhook_targets import parse_networks

    try:
        return tuple(str(network) for network in parse_networks(cidrs or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--webhook-allow") from None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@app.command()
def serve(
    data_dir: DataDir = Path("/var/lib/ztb-broker"),
    db: Db = None,
    listen: Annotated[
        str, typer.Option("--listen", envvar="ZTB_LISTEN", help="HOST:PORT to bind.")
    ] = "127.0.0.1:8443",
    tls_name: TlsNames = None,
    agent_listen: Annotated[
        str | None,
        typer.Option(
            "--agent-listen",
            envvar="ZTB_AGENT_LISTEN",
            help="HOST:PORT of the agents' own mTLS listener (ztb CA certificate); "
            "--listen then serves people only and may use --cert or --plain-http.",
            show_default=False,
        ),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert",
            envvar="ZTB_CERT",
            help="Certificate (PEM chain) for the people's listener, e.g. a public CA's.",
            dir_okay=False,
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", envvar="ZTB_KEY", help="Private key of --cert.", dir_okay=False),
    ] = None,
    plain_http: Annotated[
        bool,
        typer.Option(
            "--plain-http",
            envvar="ZTB_PLAIN_HTTP",
            help="People's listener speaks plain HTTP on loopback, behind a TLS reverse proxy.",
        ),
    ] = False,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            envvar="ZTB_TRUSTED_PROXY",
            help="Address of a reverse proxy whose X-Forwarded-For/-Proto are believed "
            "(repeat). Default: none.",
            show_default=False,
        ),
    ] = None,
    webhook_allow: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook-allow",
            envvar="ZTB_WEBHOOK_ALLOW",
            help="A private network (CIDR) homeowners' webhooks may reach; repeatable. "
            "By default webhooks go to public addresses only.",
        ),
    ] = None,
    max_token_ttl: Annotated[
        int,
        typer.Option(
            "--max-token-ttl",
            envvar="ZTB_MAX_TOKEN_TTL",
            min=60,
            help="Longest life, in seconds, of a token minted through the API.",
        ),
    ] = DEFAULT_MAX_TOKEN_TTL_S,
) -> None:
    """Serve the API over HTTPS; agents authenticate with client certificates (mTLS)."""
    from broker.app import create_app
    from broker.bootstrap import prepare
    from broker.jsonlog import configure
    from broker.listeners import plan_listeners, serve_listeners

    host, port = _listen(listen)
    agents = _listen(agent_listen) if agent_listen else None
    if (cert is None) != (key is None):
        raise typer.BadParameter("give --cert and --key together", param_hint="--cert/--key")
    names = _tls_names(tls_name, agents[0] if agents else host, data_dir)
    settings = Settings(
        data_dir=data_dir,
        db_url=db,
        tls_names=names,
        webhook_allow=_networks(webhook_allow),
        max_token_ttl_s=max_token_ttl,
    )
    prepare(settings)  # keys checked against the database; server cert current for the names
    listeners = plan_listeners(
        data_dir,
        (host, port),
        agents,
        (cert, key) if cert and key else None,
        plain_http,
        trusted_proxy or (),
    )
    configure(logging.INFO)
    serve_listeners(create_app(settings), listeners, log_config=None, access_log=False)


@app.command()
def bootstrap(
    data_dir: DataDir,
    email: Annotated[str, typer.Option("--email", help="The first admin's email.")] = (
        "admin@localhost"
    ),
    db: Db = None,
    tls_name: TlsNames = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create the data directory, CA (DATA_DIR/ca.pem), keys and the first admin; print
    the admin token (and, on stderr, the audit public key to pin elsewhere)."""
    from broker.bootstrap import bootstrap as run_bootstrap
    from broker.pki import CA_CERT_FILE

    settings = Settings(data_dir=data_dir, db_url=db, tls_names=_tls_names(tls_name, None))
    result = run_bootstrap(settings, email)
    if as_json:
        ca_file = str(data_dir / CA_CERT_FILE)
        typer.echo(json.dumps({**result, "data_dir": str(data_dir), "ca_cert": ca_file}))
    else:
        typer.echo(result["token"])
        typer.echo(_PIN_ADVICE + result["audit_public_key"], err=True)


@app.command()
def backup(
    output: Annotated[
        Path,
        typer.Option("--output", help="New file for the copy (created 0600).", dir_okay=False),
    ],
    data_dir: DataDir = Path("/var/lib/ztb-broker"),
    db: Db = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Copy the SQLite database while the broker runs (online backup); for PostgreSQL,
    print the pg_dump command. The CA and audit keys are
    not in it: keep them apart (`ztb broker export-keys`)."""
    from sqlalchemy import make_url

    from broker.backup import backup_sqlite, pg_dump_hint

    url = Settings(data_dir=data_dir, db_url=db).database_url
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        raise typer.BadParameter(pg_dump_hint(url, output), param_hint="--db")
    pages = backup_sqlite(Path(parsed.database), output)
    result = {"output": str(output), "database": parsed.database, "pages": pages}
    typer.echo(json.dumps(result) if as_json else f"backup written to {output} ({pages} pages)")


@app.command()
def migrate(
    data_dir: DataDir = Path("/var/lib/ztb-broker"),
    db: Db = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Revision to move to (default: the newest); an older one downgrades "
            "(rollback, run with the newer release before reinstalling the older).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Upgrade (or downgrade) the database schema under a lock: replicas take turns."""
    from broker.db.engine import make_engine
    from broker.db.engine import migrate as run_migrations
    from broker.deployment import check_before_migrating
    from broker.secret_key import attach_key, check_fingerprint

    settings = Settings(data_dir=data_dir, db_url=db)
    if db is None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        check_before_migrating(settings, engine)  # a replica without the keys stops here
        box = attach_key(settings, engine)  # sealing (0003) and its downgrade need the key
        before, after = run_migrations(engine, to)
        check_fingerprint(engine, box)
    finally:
        engine.dispose()
    result = {"before": before, "after": after, "changed": before != after}
    text = f"schema at {after}" + (f" (was {before or 'empty'})" if before != after else "")
    typer.echo(json.dumps(result) if as_json else text)


_PIN_ADVICE = (
    "audit public key (keep a copy off this host; check with `ztb audit verify --public-key KEY`): "
)


@app.command("audit-key")
def audit_key(data_dir: DataDir) -> None:
    """Print the public half of DATA_DIR's audit-signing key (to pin it elsewhere)."""
    from broker.audit import Signer

    settings = Settings(data_dir=data_dir)
    if not settings.signing_key_path.exists():
        raise typer.BadParameter(
            f"{settings.signing_key_path} does not exist", param_hint="--data-dir"
        )
    typer.echo(Signer.load_or_create(settings.signing_key_path).public_key)


@app.command("export-keys")
def export_keys(
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="New file (0600), or '-' for standard output.", dir_okay=False
        ),
    ],
    data_dir: DataDir = Path("/var/lib/ztb-broker"),
) -> None:
    """Write the deployment's CA and audit-signing keys as one JSON document: what a new
    replica (or a restore) imports. Secret: keep it in a secret store, not beside backups."""
    from broker.deployment import export_keys as export
    from broker.deployment import write_secret

    document = json.dumps(export(Settings(data_dir=data_dir)))
    if str(output) == "-":
        typer.echo(document)
    else:
        write_secret(output, document + "\n")


@app.command("import-keys")
def import_keys(
    input_file: Annotated[
        Path,
        typer.Option(
            "--input", help="File from export-keys, or '-' for standard input.", dir_okay=False
        ),
    ],
    data_dir: DataDir = Path("/var/lib/ztb-broker"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Put the deployment's keys into this replica's data directory (empty, or holding the
    same keys); `serve` then checks them against the database."""
    import sys

    from broker.deployment import import_keys as load

    document = sys.stdin.read() if str(input_file) == "-" else input_file.read_text()
    identity = load(Settings(data_dir=data_dir), document)
    result = {
        "ca_fingerprint": identity.ca_fingerprint,
        "audit_public_key": identity.audit_public_key,
    }
    typer.echo(json.dumps(result) if as_json else f"keys imported: CA {identity.ca_fingerprint}")
