"""``ztb user ...``: people, their API tokens and their TOTP second factor."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from ztb.client.commands.common import (
    Connection,
    clock,
    duration_seconds,
    named,
    with_connection,
)
from ztb.client.http import ZtbClient

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Manage users and their tokens.")
token_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Create, list and revoke API tokens."
)
totp_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Turn on TOTP for approvals and logins."
)
app.add_typer(token_app, name="token")
app.add_typer(totp_app, name="totp")


class Role(StrEnum):
    admin = "admin"
    homeowner = "homeowner"
    technician = "technician"


PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first stdin line.")
]


def _password_from_stdin() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise typer.BadParameter("stdin held no password", param_hint="--password-stdin")
    return password


def _user_id(client: ZtbClient, user: str | None) -> str:
    """An id for USER: yourself when omitted, looked up by email when it holds an '@'."""
    if not user:
        return str(client.me()["id"])
    if "@" not in user:
        return user
    for found in client.list_users():
        if str(found.get("email", "")).lower() == user.lower():
            return str(found["id"])
    raise typer.BadParameter(f"no user with email {user!r}", param_hint="USER")


def _yes(value: object) -> str:
    return "yes" if value else "no"


@app.command("create")
@with_connection()
def create_user(
    conn: Connection,
    email: str,
    role: Annotated[Role, typer.Option("--role", help="What the user may do.")],
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Create a user and print their first API token (shown once)."""
    password = _password_from_stdin() if password_stdin else None
    user = conn.call(lambda client: client.create_user(email, role.value, password))
    conn.emit_created(
        user,
        str(user.get("token", "")),
        f"created {user.get('role')} {user.get('email')} ({user.get('id')}); "
        "API token below, shown once:",
    )


@app.command("list")
@with_connection()
def list_users(conn: Connection) -> None:
    """List all users (admin)."""
    users = conn.call(lambda client: client.list_users())
    conn.emit_rows(
        "users",
        users,
        ("id", "email", "role", "totp"),
        lambda u: (
            str(u.get("id")),
            str(u.get("email")),
            str(u.get("role")),
            _yes(u.get("totp_enabled")),
        ),
    )


@app.command("whoami")
@with_connection()
def whoami(conn: Connection) -> None:
    """Show who the token belongs to."""
    me = conn.call(lambda client: client.me())
    totp = "on" if me.get("totp_enabled") else "off"
    conn.emit(me, f"{me.get('email')}  {me.get('role')}  {me.get('id')}  totp {totp}")


@app.command("login")
@with_connection(token=False)
def login(
    conn: Connection,
    email: str,
    password_stdin: PasswordStdinOption = False,
    totp: Annotated[str | None, typer.Option("--totp", help="Current TOTP code.")] = None,
) -> None:
    """Trade a password (and TOTP code) for a new API token."""
    password = (
        _password_from_stdin() if password_stdin else typer.prompt("password", hide_input=True)
    )
    with conn.client(need_token=False) as client:
        issued = client.login(email, password, totp)
    conn.emit_created(
        issued,
        str(issued.get("token", "")),
        f"logged in as {email}; token expires {clock(issued.get('expires_at'))}:",
    )


@token_app.command("create")
@with_connection()
def create_token(
    conn: Connection,
    user: Annotated[str | None, typer.Argument(help="User id or email; default: yourself.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Label for the token.")] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Lifetime, e.g. 8h.")] = None,
) -> None:
    """Issue another API token and print it (shown once)."""
    ttl_s = duration_seconds(ttl, "--ttl") if ttl else None
    issued = conn.call(lambda client: client.create_token(_user_id(client, user), name, ttl_s))
    conn.emit_created(
        issued,
        str(issued.get("token", "")),
        f"token {issued.get('id')} expires {clock(issued.get('expires_at'))}; shown once:",
    )


@token_app.command("list")
@with_connection()
def list_tokens(conn: Connection) -> None:
    """List tokens (all for an admin, your own otherwise)."""
    tokens = conn.call(lambda client: client.list_tokens())
    conn.emit_rows(
        "tokens",
        tokens,
        ("id", "user", "name", "expires", "revoked"),
        lambda t: (
            str(t.get("id")),
            named(t, "user_email", "user_id"),
            str(t.get("name") or "-"),
            clock(t.get("expires_at")),
            _yes(t.get("revoked")),
        ),
    )


@token_app.command("revoke")
@with_connection()
def revoke_token(
    conn: Connection,
    token_id: str,
) -> None:
    """Revoke an API token by its id."""
    conn.call(lambda client: client.revoke_token(token_id))
    conn.emit({"id": token_id, "revoked": True}, f"token {token_id} revoked")


@totp_app.command("enable")
@with_connection()
def enable_totp(conn: Connection) -> None:
    """Start TOTP enrollment: prints the secret and otpauth URI for an authenticator app."""
    enrollment = conn.call(lambda client: client.begin_totp())
    conn.emit(
        enrollment,
        f"secret  {enrollment.get('secret')}\n"
        f"uri     {enrollment.get('uri')}\n"
        "Add it to your authenticator app, then run: ztb user totp confirm CODE",
    )


@totp_app.command("confirm")
@with_connection()
def confirm_totp(
    conn: Connection,
    code: str,
) -> None:
    """Finish TOTP enrollment with a current code from the authenticator app."""
    conn.call(lambda client: client.confirm_totp(code))
    conn.emit({"totp_enabled": True}, "TOTP is on")
