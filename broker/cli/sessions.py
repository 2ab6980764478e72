"""``ztb session ...``: request, approve and end access sessions; fetch the tunnel config.

The technician's WireGuard key pair is made here, on the technician's machine: only the
public key goes to the broker, the private key waits in ``~/.config/ztb/keys/ID.key``
(mode 0600) until ``ztb session config`` puts it into the wg-quick file.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.common import (
    BrokerOption,
    CaCertOption,
    JsonOption,
    TokenOption,
    clock,
    connect,
    duration_seconds,
    emit,
    emit_created,
    fields,
    grant_texts,
    print_json,
    table,
)
from broker.client import BrokerClient
from netpolicy import Grant, PolicyError, format_duration, validate_public_key
from ztb.wgkeys import key_pair

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Request, approve and end access sessions."
)

ACTIVE_WAIT_S = 10.0
ACTIVE_POLL_S = 0.02
ACTIVE_POLL_MAX_S = 0.25

SessionArgument = Annotated[str, typer.Argument(help="Session id, e.g. ses_3k9f...")]
GrantOption = Annotated[
    list[str] | None,
    typer.Option("--grant", help="DEVICE:PROTO/PORT[-PORT], e.g. thermostat:tcp/443 (repeat)."),
]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why, for the record.")]

PRIVATE_KEY_PLACEHOLDER = "PrivateKey = <your private key>"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- the technician's key pair -------------------------------------------------------------


def keys_dir() -> Path:
    """``$ZTB_HOME/keys``, else ``$XDG_CONFIG_HOME/ztb/keys``, else ``~/.config/ztb/keys``."""
    if home := os.environ.get("ZTB_HOME"):
        return Path(home) / "keys"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "ztb" / "keys"


def key_path(session_id: str) -> Path:
    if not _SAFE_ID.match(session_id):
        raise ValueError(f"unexpected session id {session_id!r}")
    return keys_dir() / f"{session_id}.key"


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, also when ``path`` already existed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


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


def fill_private_key(config: str, session_id: str) -> str:
    """Put the locally kept private key into the broker's placeholder line, if it has one."""
    lines = config.splitlines(keepends=True)
    spots = [i for i, line in enumerate(lines) if line.strip() == PRIVATE_KEY_PLACEHOLDER]
    if not spots:
        return config
    path = key_path(session_id)
    try:
        private_key = path.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(
            f"the private key of {session_id} is not on this machine (looked for {path}); "
            "fetch the config where the session was requested"
        ) from None
    for i in spots:
        lines[i] = f"PrivateKey = {private_key}\n"
    return "".join(lines)


# -- how sessions read ---------------------------------------------------------------------


def grant_text(grant: object) -> str:
    if isinstance(grant, dict):
        try:
            return str(Grant.from_dict(grant))
        except PolicyError:
            return " ".join(str(v) for v in grant.values())
    return str(grant)


def grants_text(grants: object) -> str:
    return ", ".join(grant_text(g) for g in grants) if isinstance(grants, list) else "-"


def state_text(session: dict[str, Any]) -> str:
    state = str(session.get("state", "?"))
    reason = session.get("end_reason")
    return f"{state} ({reason})" if state == "ended" and reason else state


def when_text(session: dict[str, Any]) -> str:
    state = session.get("state")
    if state == "requested":
        duration = session.get("duration_s")
        return f"for {format_duration(duration)}" if isinstance(duration, int) else ""
    if state == "ended":
        return f"ended {clock(session.get('ended_at'))}"
    return f"expires {clock(session.get('expires_at'))}"


def describe(session: dict[str, Any]) -> str:
    """``session ses_x  approved  thermostat 192.168.1.20 tcp/443  expires 14:32 UTC``."""
    parts = [
        f"session {session.get('id')}",
        state_text(session),
        grants_text(session.get("grants")),
        when_text(session),
    ]
    if session.get("pending_grants"):
        parts.append(f"pending {grants_text(session.get('pending_grants'))}")
    return "  ".join(part for part in parts if part)


def _size(count: object) -> str:
    if not isinstance(count, int) or count < 0:
        return "-"
    if count < 1024:
        return f"{count} B"
    exponent = min(3, (count.bit_length() - 1) // 10)
    return f"{count / 1024**exponent:.1f} {('B', 'KiB', 'MiB', 'GiB')[exponent]}"


def _request_with_local_key(
    send: Callable[[str], dict[str, Any]], key_file: Path | None
) -> dict[str, Any]:
    """Send only the public key; the private key becomes ``ID.key`` once the id is known.

    It is written (0600) before the request leaves, so a full disk never costs a session
    its key, and it is removed again when the request fails.
    """
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
def request_session(
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
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask a homeowner for access to some devices; prints the session id."""
    grants = grant_texts(grant or [])
    duration_s = duration_seconds(duration, "--duration")
    if key_file is not None and no_local_key:
        raise typer.BadParameter("--key-file and --no-local-key exclude each other")
    if not reason.strip():
        raise typer.BadParameter("say what the work is", param_hint="--reason")
    with connect(broker, token, ca_cert) as client:
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
    emit_created(as_json, session, session_id, note)


def _change(
    broker: str | None,
    token: str | None,
    ca_cert: Path | None,
    as_json: bool,
    change: Callable[[BrokerClient], dict[str, Any]],
) -> None:
    """Run one state change and print the session as it is afterwards."""
    with connect(broker, token, ca_cert) as client:
        session = change(client)
    emit(as_json, session, describe(session))


@app.command("approve")
def approve_session(
    session_id: SessionArgument,
    duration: Annotated[
        str | None, typer.Option("--duration", help="Shorter than requested, e.g. 20m.")
    ] = None,
    totp: Annotated[str | None, typer.Option("--totp", help="Current TOTP code.")] = None,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a requested session (or its pending extra grants)."""
    duration_s = duration_seconds(duration, "--duration") if duration else None
    _change(
        broker,
        token,
        ca_cert,
        as_json,
        lambda client: client.approve_session(session_id, duration_s, totp),
    )


@app.command("deny")
def deny_session(
    session_id: SessionArgument,
    reason: ReasonOption = None,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Refuse a requested session."""
    _change(broker, token, ca_cert, as_json, lambda client: client.deny_session(session_id, reason))


@app.command("revoke")
def revoke_session(
    session_id: SessionArgument,
    reason: ReasonOption = None,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """End a live session now: the router drops the peer and its rules."""
    _change(
        broker, token, ca_cert, as_json, lambda client: client.revoke_session(session_id, reason)
    )


@app.command("cancel")
def cancel_session(
    session_id: SessionArgument,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Withdraw your own request before it is approved."""
    _change(broker, token, ca_cert, as_json, lambda client: client.cancel_session(session_id))


@app.command("add-grant")
def add_grant(
    session_id: SessionArgument,
    grant: GrantOption = None,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask for more devices or ports in a live session; the owner approves them again."""
    grants = grant_texts(grant or [])
    _change(broker, token, ca_cert, as_json, lambda client: client.add_grants(session_id, grants))


@app.command("show")
def show_session(
    session_id: SessionArgument,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one session."""
    with connect(broker, token, ca_cert) as client:
        session = client.get_session(session_id)
    duration = session.get("duration_s")
    approved = clock(session.get("approved_at")) if session.get("approved_at") else None
    text = fields(
        [
            ("session", session.get("id")),
            ("state", state_text(session)),
            ("home", session.get("home_id")),
            ("technician", session.get("technician_id")),
            ("reason", session.get("reason")),
            ("grants", grants_text(session.get("grants"))),
            (
                "pending",
                grants_text(pending) if (pending := session.get("pending_grants")) else None,
            ),
            ("duration", format_duration(duration) if isinstance(duration, int) else None),
            ("requested", clock(session.get("requested_at"))),
            ("approved", f"{approved} by {session.get('approved_by')}" if approved else None),
            ("expires", clock(session.get("expires_at")) if session.get("expires_at") else None),
            ("ended", clock(session.get("ended_at")) if session.get("ended_at") else None),
            ("tunnel ip", session.get("tunnel_ip")),
            ("key from", session.get("key_origin")),
        ]
    )
    emit(as_json, session, text)


@app.command("list")
def list_sessions(
    home: Annotated[str | None, typer.Option("--home", help="Only this home.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="Only this state.")] = None,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the sessions you can see."""
    with connect(broker, token, ca_cert) as client:
        sessions = client.list_sessions(home, state)
    rows = [
        (
            str(s.get("id")),
            state_text(s),
            str(s.get("home_id")),
            grants_text(s.get("grants")),
            when_text(s),
        )
        for s in sessions
    ]
    emit(as_json, {"sessions": sessions}, table(("id", "state", "home", "grants", "when"), rows))


@app.command("config")
def session_config(
    session_id: SessionArgument,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write here (mode 0600), e.g. ztb0.conf.", dir_okay=False
        ),
    ] = None,
    qr: Annotated[bool, typer.Option("--qr", help="Show a QR code for the mobile app.")] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            max=60,
            help="Seconds to wait for the router to apply the session before giving the config.",
        ),
    ] = ACTIVE_WAIT_S,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the wg-quick config of an approved session, with your private key filled in."""
    if qr and as_json:
        raise typer.BadParameter("--qr and --json exclude each other")
    with connect(broker, token, ca_cert) as client:
        wait_until_active(client, session_id, wait)
        config = fill_private_key(client.wg_quick(session_id), session_id)
    if output is not None:
        write_secret(output, config)
    if as_json:
        print_json({"id": session_id, "config": config, "output": str(output) if output else None})
    elif qr:
        _print_qr(config)
    elif output is not None:
        typer.echo(f"wrote {output} (mode 0600); connect with: wg-quick up {output.resolve()}")
    else:
        typer.echo(config, nl=False)


def wait_until_active(
    client: BrokerClient, session_id: str, limit_s: float, *, announce: bool = True
) -> None:
    """Hold the config until the router has applied the session (state ``active``).

    A tunnel brought up before the router has the peer sends a handshake that goes
    unanswered, and WireGuard retries only after 5 s: waiting here is what makes access
    start in a fraction of a second. Polls start fast (the agent usually applies within
    milliseconds) and back off; past ``limit_s`` the config is given anyway.
    """
    deadline = time.monotonic() + limit_s
    pause = ACTIVE_POLL_S
    while True:
        state = client.get_session(session_id).get("state")
        if state != "approved" or time.monotonic() >= deadline:
            return
        if announce:
            print("waiting for the home router to apply the session...", file=sys.stderr)
            announce = False
        time.sleep(pause)
        pause = min(pause * 1.5, ACTIVE_POLL_MAX_S)


def _print_qr(config: str) -> None:
    try:
        import segno
    except ImportError:
        raise RuntimeError("--qr needs the segno package (pip install segno)") from None
    segno.make_qr(config).terminal(out=sys.stdout, compact=True)


@app.command("report")
def session_report(
    session_id: SessionArgument,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """What happened in a session: timeline, approver, traffic per grant, last handshake."""
    with connect(broker, token, ca_cert) as client:
        report = client.session_report(session_id)
    emit(as_json, report, report_text(report))


def report_text(report: dict[str, Any]) -> str:
    session: dict[str, Any] = report.get("session") or {}
    approved_by = session.get("approved_by")
    head = fields(
        [
            ("session", f"{session.get('id')}  {state_text(session)}"),
            ("home", session.get("home_id")),
            ("technician", session.get("technician_id")),
            ("reason", session.get("reason")),
            (
                "approved by",
                approved_by and f"{approved_by} at {clock(session.get('approved_at'))}",
            ),
            ("tunnel ip", session.get("tunnel_ip")),
            ("last handshake", clock(report.get("last_handshake"))),
        ]
    )
    grants = [
        (grant_text(g.get("grant")), str(g.get("packets", "-")), _size(g.get("bytes")))
        for g in report.get("grants") or []
        if isinstance(g, dict)
    ]
    events = [
        (clock(e.get("time")), str(e.get("action")), str(e.get("actor") or "-"))
        for e in report.get("timeline") or []
        if isinstance(e, dict)
    ]
    return "\n\n".join(
        [
            head,
            table(("grant", "packets", "bytes"), grants),
            table(("time", "event", "by"), events),
        ]
    )
