"""``ztb ca fetch``: get the broker's CA certificate, trusted only if it matches the pin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ztb.client import profile
from ztb.client.ca import fetch_pinned_ca
from ztb.client.commands.common import BrokerOption, JsonOption, emit
from ztb.client.profile import CA_FILE, config_dir, write_private

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Fetch and pin the broker's CA certificate."
)


@app.command("fetch")
def fetch(
    fingerprint: Annotated[
        str,
        typer.Option(
            "--fingerprint",
            help="The CA's SHA-256 from the operator, e.g. SHA256:AB:CD:... (64 hex digits).",
        ),
    ],
    broker: BrokerOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to keep it (default: your ztb config dir)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Download the CA, check its fingerprint and keep it: your profile trusts it for this
    broker from now on (run 'ztb login' next)."""
    if not broker:
        raise typer.BadParameter("no broker URL: pass --broker or set ZTB_BROKER")
    pem = fetch_pinned_ca(broker, fingerprint)
    path = output or config_dir() / CA_FILE
    write_private(path, pem)
    saved = profile.load()
    token = saved.token if saved is not None and saved.for_broker(broker) else None
    profile.save(profile.Profile(broker.rstrip("/"), token, str(path.resolve())))
    emit(
        as_json,
        {"broker": broker, "ca_cert": str(path)},
        f"CA of {broker} matches the fingerprint; kept in {path}",
    )
