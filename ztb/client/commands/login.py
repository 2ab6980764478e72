"""``ztb login``: keep your broker, API token and CA in your profile (``ztb.client.profile``).

After it, the client commands need no ``--broker``/``--token``/``--ca-cert`` and no
``ZTB_*`` variables. Sign in with a password (and TOTP code), or store a token you were
given; either way the broker is asked who you are before anything is saved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ztb.client import profile
from ztb.client.commands.common import Connection, with_connection
from ztb.client.http import ZtbClient

app = typer.Typer(
    no_args_is_help=False, add_completion=False, help="Store your broker, token and CA."
)


@app.command("login")
@with_connection()
def login(
    conn: Connection,
    email: Annotated[
        str | None, typer.Argument(help="Your email, to sign in with your password.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first stdin line.")
    ] = False,
    totp: Annotated[str | None, typer.Option("--totp", help="Current TOTP code.")] = None,
) -> None:
    """Sign in (EMAIL and password) or keep a given --token; saves your profile (0600)."""
    broker, token, ca_cert = conn.broker, conn.token, conn.ca_cert
    if not broker:
        raise typer.BadParameter("no broker URL: pass --broker or set ZTB_BROKER")
    if (email is None) == (token is None):
        raise typer.BadParameter("give EMAIL to sign in with a password, or --token, not both")
    saved = profile.load()
    if ca_cert is None and saved is not None and saved.for_broker(broker) and saved.ca_cert:
        ca_cert = Path(saved.ca_cert)  # what 'ztb ca fetch' pinned for this broker
    if email is not None:
        password = (
            sys.stdin.readline().rstrip("\r\n")
            if password_stdin
            else typer.prompt("password", hide_input=True)
        )
        with ZtbClient(broker, None, ca_cert=ca_cert) as client:
            token = str(client.login(email, password, totp)["token"])
    assert token is not None
    with ZtbClient(broker, token, ca_cert=ca_cert) as client:
        me = client.me()
    ca = str(ca_cert.resolve()) if ca_cert else None
    path = profile.save(profile.Profile(broker.rstrip("/"), token, ca))
    conn.emit(
        {**me, "broker": broker, "profile": str(path)},
        f"logged in as {me.get('email')} ({me.get('role')}) at {broker}; profile {path}",
    )
