"""``ztb audit ...``: check the broker's hash-chained audit log and export it."""

from __future__ import annotations

import json

import typer

from ztb.client.commands.common import (
    BrokerOption,
    CaCertOption,
    JsonOption,
    TokenOption,
    connect,
    emit,
)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Verify and export the audit chain."
)


class AuditChainBroken(Exception):
    """The chain failed verification; the exit status must say so to scripts and CI."""


@app.command("verify")
def verify(
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every event's hash link and the signed checkpoints; fail on the first bad one."""
    with connect(broker, token, ca_cert) as client:
        result = client.verify_audit()
    counts = f"{result.get('events', 0)} events, {result.get('checkpoints', 0)} checkpoints"
    if result.get("ok"):
        emit(as_json, result, f"audit chain ok: {counts}")
        return
    if as_json:
        emit(as_json, result, "")
    bad = result.get("first_bad") or {}
    raise AuditChainBroken(
        f"audit chain broken at event {bad.get('seq', '?')}: "
        f"{bad.get('problem', 'unknown problem')} ({counts})"
    )


@app.command("export")
def export(
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print every audit event as one JSON line (or all in one object with --json)."""
    with connect(broker, token, ca_cert) as client:
        if as_json:
            emit(True, {"events": [json.loads(line) for line in client.export_audit()]}, "")
            return
        for line in client.export_audit():
            typer.echo(line)
