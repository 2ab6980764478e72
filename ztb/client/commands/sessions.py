"""``ztb session ...``: request, approve and end access sessions; fetch the tunnel config.

The technician's WireGuard key pair is made here, on the technician's machine: only the
public key goes to the broker; ``ztb.client.keys`` keeps the private key until ``ztb
session config`` puts it into the wg-quick file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from netpolicy import PolicyError, format_duration, validate_public_key
from ztb.client.activation import ACTIVE_WAIT_S, wait_until_active
from ztb.client.commands.common import (
    Connection,
    clock,
    duration_seconds,
    fields,
    grant_texts,
    print_json,
    with_connection,
)
from ztb.client.commands.session_text import (
    approved_text,
    describe,
    grants_text,
    home_name,
    report_text,
    state_text,
    technician,
    when_text,
)
from ztb.client.config_files import BadConfigName, write_config
from ztb.client.http import ZtbClient
from ztb.client.keys import fill_private_key, key_path, keys_dir, write_secret

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Request, approve and end access sessions."
)

SessionArgument = Annotated[str, typer.Argument(help="Session id, e.g. ses_3k9f...")]
GrantOption = Annotated[
    list[str] | None,
    typer.Option("--grant", help="DEVICE:PROTO/PORT[-PORT], e.g. thermostat:tcp/443 (repeat)."),
]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why, for the record.")]


# -- the technician's key pair -------------------------------------------------------------


def _read_key_file(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--key-file"
        ) from None
    try:
        return validate_public_key(text)  # a private key has the same 32-byte base64 shape
    except PolicyError as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--key-file") from None


def _request_with_local_key(
    send: Callable[[str], dict[str, Any]], key_file: Path | None
) -> dict[str, Any]:
    """Send only the public key; the private key becomes ``ID.key`` once the id is known.

    It is written (0600) before the request leaves, so a full disk never costs a session
    its key, and it is removed again when the request fails.
    """
    import secrets  # only requests need these; ``session list`` starts faster without

    from ztb.wgkeys import key_pair

    private_key, public_key = key_pair(_read_key_file(key_file) if key_file else None)
    pending = keys_dir() / f"pending-{secrets.token_hex(8)}.key"
    write_secret(pending, private_key + "\n")
    try:
        session = send(public_key)
        kept = key_path(str(session.get("id")))
        pending.replace(kept)
    finally:
        pending.unlink(missing_ok=True)  # still there only when something failed
    session["private_key_file"] = str(kept)
    return session


# -- commands ------------------------------------------------------------------------------


@app.command("request")
@with_connection()
def request_session(
    conn: Connection,
    home: Annotated[str, typer.Option("--home", help="Home id or name.")],
    duration: Annotated[str, typer.Option("--duration", help="How long, e.g. 30m.")],
    reason: Annotated[str, typer.Option("--reason", help="What the work is, for the owner.")],
    grant: GrantOption = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file", help="Use this WireGuard private key file (wg genkey).", dir_okay=False
        ),
    ] = None,
    no_local_key: Annotated[
        bool, typer.Option("--no-local-key", help="Let the broker make the key pair instead.")
    ] = False,
) -> None:
    """Ask a homeowner for access to some devices; prints the session id."""
    grants = grant_texts(grant or [])
    duration_s = duration_seconds(duration, "--duration")
    if key_file is not None and no_local_key:
        raise typer.BadParameter("--key-file and --no-local-key exclude each other")
    if not reason.strip():
        raise typer.BadParameter("say what the work is", param_hint="--reason")
    with conn.client() as client:
        if no_local_key:
            session = client.request_session(home, grants, duration_s, reason, None)
            note = describe(session)
        else:
            session = _request_with_local_key(
                lambda key: client.request_session(home, grants, duration_s, reason, key),
                key_file,
            )
            note = f"{describe(session)}\nprivate key kept in {session['private_key_file']}"
    session_id = str(session.get("id"))
    conn.emit_created(session, session_id, note)


def _change(conn: Connection, change: Callable[[ZtbClient], dict[str, Any]]) -> None:
    """Run one state change and print the session as it is afterwards."""
    session = conn.call(change)
    conn.emit(session, describe(session))


@app.command("approve")
@with_connection()
def approve_session(
    conn: Connection,
    session_id: SessionArgument,
    duration: Annotated[
        str | None, typer.Option("--duration", help="Shorter than requested, e.g. 20m.")
    ] = None,
    totp: Annotated[str | None, typer.Option("--totp", help="Current TOTP code.")] = None,
) -> None:
    """Approve a requested session (or its pending extra grants)."""
    duration_s = duration_seconds(duration, "--duration") if duration else None
    _change(
        conn,
        lambda client: client.approve_session(session_id, duration_s, totp),
    )


@app.command("deny")
@with_connection()
def deny_session(
    conn: Connection,
    session_id: SessionArgument,
    reason: ReasonOption = None,
) -> None:
    """Refuse a requested session."""
    _change(conn, lambda client: client.deny_session(session_id, reason))


@app.command("revoke")
@with_connection()
def revoke_session(
    conn: Connection,
    session_id: SessionArgument,
    reason: ReasonOption = None,
) -> None:
    """End a live session now: the router drops the peer and its rules."""
    _change(conn, lambda client: client.revoke_session(session_id, reason))


@app.command("cancel")
@with_connection()
def cancel_session(
    conn: Connection,
    session_id: SessionArgument,
) -> None:
    """Withdraw your own request before it is approved."""
    _change(conn, lambda client: client.cancel_session(session_id))


@app.command("add-grant")
@with_connection()
def add_grant(
    conn: Connection,
    session_id: SessionArgument,
    grant: GrantOption = None,
) -> None:
    """Ask for more devices or ports in a live session; the owner approves them again."""
    grants = grant_texts(grant or [])
    _change(conn, lambda client: client.add_grants(session_id, grants))


@app.command("show")
@with_connection()
def show_session(
    conn: Connection,
    session_id: SessionArgument,
) -> None:
    """Show one session."""
    session = conn.call(lambda client: client.get_session(session_id))
    duration = session.get("duration_s")
    text = fields(
        [
            ("session", session.get("id")),
            ("state", state_text(session)),
            ("home", home_name(session)),
            ("technician", technician(session)),
            ("reason", session.get("reason")),
            ("grants", grants_text(session.get("grants"))),
            (
                "pending",
                grants_text(pending) if (pending := session.get("pending_grants")) else None,
            ),
            ("duration", format_duration(duration) if isinstance(duration, int) else None),
            ("requested", clock(session.get("requested_at"))),
            ("approved", approved_text(session)),
            ("expires", clock(session.get("expires_at")) if session.get("expires_at") else None),
            ("ended", clock(session.get("ended_at")) if session.get("ended_at") else None),
            ("tunnel ip", session.get("tunnel_ip")),
            ("key from", session.get("key_origin")),
        ]
    )
    conn.emit(session, text)


@app.command("list")
@with_connection()
def list_sessions(
    conn: Connection,
    home: Annotated[str | None, typer.Option("--home", help="Only this home.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="Only this state.")] = None,
) -> None:
    """List the sessions you can see."""
    sessions = conn.call(lambda client: client.list_sessions(home, state))
    conn.emit_rows(
        "sessions",
        sessions,
        ("id", "state", "home", "grants", "when"),
        lambda s: (
            str(s.get("id")),
            state_text(s),
            home_name(s),
            grants_text(s.get("grants")),
            when_text(s),
        ),
    )


@app.command("config")
@with_connection()
def session_config(
    conn: Connection,
    session_id: SessionArgument,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write here (mode 0600): a FILE.conf whose name wg-quick accepts (at most "
            "15 characters before .conf), or a directory to get DIR/ztb-<home>.conf.",
        ),
    ] = None,
    qr: Annotated[
        bool,
        typer.Option("--qr", help="Show a QR code for the mobile app (needs the private key)."),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            max=60,
            help="Seconds to wait for the router to apply the session before giving the config.",
        ),
    ] = ACTIVE_WAIT_S,
) -> None:
    """Print the wg-quick config of an approved session, with your private key filled in."""
    if qr and conn.as_json:
        raise typer.BadParameter("--qr and --json exclude each other")
    with conn.client() as client:
        session = wait_until_active(client, session_id, wait)
        config = client.wg_quick(session_id)
    config = fill_private_key(config, session_id, session.get("key_origin"))
    written = None
    if output is not None:
        try:
            written = write_config(output, session_id, home_name(session), config)
        except BadConfigName as exc:
            raise typer.BadParameter(str(exc), param_hint="--output") from None
    if conn.as_json:
        print_json({"id": session_id, "config": config, "output": written and str(written)})
    elif qr:
        _print_qr(config)
    elif written is not None:
        typer.echo(f"wrote {written} (mode 0600); connect with: wg-quick up {written.resolve()}")
    else:
        typer.echo(config, nl=False)


def _print_qr(config: str) -> None:
    try:
        import segno
    except ImportError:
        raise RuntimeError("--qr needs the segno package (pip install segno)") from None
    segno.make_qr(config).terminal(out=sys.stdout, compact=True)


@app.command("report")
@with_connection()
def session_report(
    conn: Connection,
    session_id: SessionArgument,
) -> None:
    """What happened in a session: timeline, approver, traffic per grant, last handshake."""
    report = conn.call(lambda client: client.session_report(session_id))
    conn.emit(report, report_text(report))
