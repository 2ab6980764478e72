"""``ztb audit ...``: check the broker's hash-chained audit log and export it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ztb.client.commands.common import (
    Connection,
    with_connection,
)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Verify and export the audit chain."
)


class AuditChainBroken(Exception):
    """The chain failed verification; the exit status must say so to scripts and CI."""


PublicKeyOption = Annotated[
    str | None,
    typer.Option(
        "--public-key",
        help="The audit public key printed at bootstrap (base64), or a file holding it. "
        "Without it the broker checks against its own key, which proves less.",
    ),
]
AgainstOption = Annotated[
    Path | None,
    typer.Option(
        "--against",
        help="Digests saved outside the broker (session reports, webhook bodies, earlier "
        "`audit verify --json` output): JSON or JSON lines; the chain must contain each.",
        dir_okay=False,
    ),
]


def pinned_key(value: str | None) -> str | None:
    """``--public-key`` as given, or the first non-empty line of the file it names."""
    if value is None or not Path(value).is_file():
        return value
    lines = [line.strip() for line in Path(value).read_text().splitlines() if line.strip()]
    if not lines:
        raise typer.BadParameter(f"{value} is empty", param_hint="--public-key")
    return lines[0]


def _digest(entry: Any, where: str) -> dict[str, Any]:
    """One saved digest: a session report's or webhook body's ``audit``, a verify
    result's ``newest_checkpoint``, or a bare ``{seq, hash[, number, digest]}``."""
    if isinstance(entry, dict):
        entry = entry.get("audit") or entry.get("newest_checkpoint") or entry
    if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int) or "hash" not in entry:
        raise typer.BadParameter(
            f"{where} holds no audit digest ({{seq, hash}})", param_hint="--against"
        )
    digest = {"seq": entry["seq"], "hash": entry["hash"]}
    nested = entry.get("checkpoint")
    checkpoint: dict[str, Any] = nested if isinstance(nested, dict) else entry
    if "number" in checkpoint and "digest" in checkpoint:
        digest |= {"number": checkpoint["number"], "digest": checkpoint["digest"]}
    return digest


def saved_digests(path: Path) -> list[dict[str, Any]]:
    """Every digest in ``path``: one JSON document (an object or a list) or JSON lines."""
    text = path.read_text()
    try:
        documents = [json.loads(text)]
    except ValueError:
        try:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise typer.BadParameter(
                f"{path}: not JSON or JSON lines ({exc})", param_hint="--against"
            ) from None
    entries = [item for doc in documents for item in (doc if isinstance(doc, list) else [doc])]
    return [_digest(entry, f"{path} entry {n}") for n, entry in enumerate(entries, 1)]


@app.command("verify")
@with_connection()
def verify(
    conn: Connection,
    public_key: PublicKeyOption = None,
    against: AgainstOption = None,
) -> None:
    """Check every event's hash link and the chain of signed checkpoints (against the
    pinned key) and that they reach the tip; fail on the first bad one."""
    key = pinned_key(public_key)
    digests = saved_digests(against) if against is not None else None
    result = conn.call(lambda client: client.verify_audit(key, digests))
    counts = f"{result.get('events', 0)} events, {result.get('checkpoints', 0)} checkpoints"
    if result.get("witnesses"):
        counts += f", {result['witnesses']} saved digests"
    if result.get("ok"):
        pin = "pinned key" if result.get("pinned") else "the broker's own key (not pinned)"
        conn.emit(result, f"audit chain ok: {counts}; signatures checked with {pin}")
        return
    if conn.as_json:
        conn.emit(result, "")
    bad = result.get("first_bad") or {}
    raise AuditChainBroken(
        f"audit chain broken at event {bad.get('seq', '?')}: "
        f"{bad.get('problem', 'unknown problem')} ({counts})"
    )


@app.command("export")
@with_connection()
def export(conn: Connection) -> None:
    """Print every audit event as one JSON line (or all in one object with --json)."""
    with conn.client() as client:
        if conn.as_json:
            conn.emit({"events": [json.loads(line) for line in client.export_audit()]}, "")
            return
        for line in client.export_audit():
            typer.echo(line)
