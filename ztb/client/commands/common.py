"""Options and output shared by the client command groups (user, home, device, session, audit).

These groups run on a technician's laptop with only typer and httpx installed, so this
module imports nothing heavier than the pure ``netpolicy`` core and ``ztb.client.http``.
Output is short aligned text by default and exactly one JSON object with ``--json``.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from netpolicy import HARD_MAX_DURATION_S, GrantSpec, PolicyError, parse_duration
from ztb.client import profile
from ztb.client.http import ZtbClient

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        envvar="ZTB_BROKER",
        help="Broker URL, e.g. https://broker.example:8443.",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="ZTB_TOKEN", help="API token.", show_default=False),
]
CaCertOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar="ZTB_CA_CERT",
        help="Broker CA certificate to trust (default: the system trust store).",
        dir_okay=False,
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def connect(
    broker: str | None, token: str | None, ca_cert: Path | None, *, need_token: bool = True
) -> ZtbClient:
    """A client for the chosen broker, or a one-line error naming the missing setting.

    What flags and ``ZTB_*`` variables leave open comes from the ``ztb login`` profile,
    but only for the profile's own broker: its token never goes to another one.
    """
    saved = profile.load() if not (broker and token and ca_cert) else None
    if saved is not None and (broker is None or saved.for_broker(broker)):
        broker, token = saved.broker, token or saved.token
        ca_cert = ca_cert or (Path(saved.ca_cert) if saved.ca_cert else None)
    if not broker:
        raise typer.BadParameter("no broker URL: pass --broker, set ZTB_BROKER or 'ztb login'")
    if need_token and not token:
        raise typer.BadParameter("no API token: pass --token, set ZTB_TOKEN or 'ztb login'")
    return ZtbClient(broker, token, ca_cert=ca_cert)


T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    """What ``--broker``/``--token``/``--ca-cert``/``--json`` chose for one command."""

    broker: str | None
    token: str | None
    ca_cert: Path | None
    as_json: bool

    def client(self, *, need_token: bool = True) -> ZtbClient:
        return connect(self.broker, self.token, self.ca_cert, need_token=need_token)

    def call(self, request: Callable[[ZtbClient], T]) -> T:
        """The answer to one request, on a connection closed again before printing."""
        with self.client() as client:
            return request(client)

    def emit(self, data: Any, text: str) -> None:
        emit(self.as_json, data, text)

    def emit_created(self, data: dict[str, Any], value: str, note: str) -> None:
        """Creating commands print the new id or token alone on stdout, so ``$(ztb ...)``
        works; the sentence for a person goes to stderr. ``--json`` prints the whole object.
        """
        if self.as_json:
            print_json(data)
            return
        typer.echo(note, err=True)
        typer.echo(value)

    def emit_rows(
        self,
        key: str,
        items: list[dict[str, Any]],
        headers: Sequence[str],
        row: Callable[[dict[str, Any]], Sequence[str]],
    ) -> None:
        """A list command's output: ``{key: items}`` as JSON, else a table of one row each."""
        self.emit({key: items}, table(headers, map(row, items)))


def _keyword(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


_CONNECTION_OPTIONS = (
    _keyword("broker", BrokerOption, None),
    _keyword("token", TokenOption, None),
    _keyword("ca_cert", CaCertOption, None),
    _keyword("as_json", JsonOption, False),
)


def with_connection(*, token: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the four connection options, handed to it as one ``conn: Connection``.

    The options stay on every command rather than on its group, so they may follow the
    subcommand as users type them (``ztb session list --json``). ``token=False`` leaves
    ``--token`` out, for commands that get a token rather than use one.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True).parameters.values()
        options = [option for option in _CONNECTION_OPTIONS if token or option.name != "token"]

        @functools.wraps(command)
        def run(**values: Any) -> None:
            chosen = [values.pop(option.name, option.default) for option in _CONNECTION_OPTIONS]
            command(Connection(*chosen), **values)

        signature = inspect.Signature([*(p for p in own if p.name != "conn"), *options])
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return run

    return decorate


# -- input ---------------------------------------------------------------------------------


def duration_seconds(text: str, option: str) -> int:
    """Seconds from ``30m``-style text, checked here so a typo never reaches the broker."""
    try:
        seconds = parse_duration(text)
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
    if not 0 < seconds <= HARD_MAX_DURATION_S:
        raise typer.BadParameter(
            f"must be between 1s and {HARD_MAX_DURATION_S // 3600}h, not {text!r}",
            param_hint=option,
        )
    return seconds


def grant_texts(texts: Sequence[str], option: str = "--grant") -> list[str]:
    """Grants in their canonical spelling, after checking each one's syntax locally."""
    if not texts:
        raise typer.BadParameter("give at least one DEVICE:PROTO/PORT[-PORT]", param_hint=option)
    try:
        return [str(GrantSpec.parse(text)) for text in texts]
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


# -- output --------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, separators=(",", ":"), default=str))


def emit(as_json: bool, data: Any, text: str) -> None:
    """Print ``data`` as JSON or ``text`` for a person."""
    if as_json:
        print_json(data)
    elif text:
        typer.echo(text)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; headers in capitals."""
    lines = [[h.upper() for h in headers], *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def named(data: dict[str, Any], name_key: str, id_key: str) -> str:
    """What a person reads an object by (a name or email the broker sent), else its id."""
    return str(data.get(name_key) or data.get(id_key) or "-")


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``label  value`` lines with aligned values, skipping empty values."""
    shown = [(label, str(value)) for label, value in pairs if value not in (None, "", [])]
    width = max((len(label) for label, _ in shown), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in shown)


def clock(timestamp: object, now: datetime | None = None) -> str:
    """``14:32 UTC`` for today, ``2026-11-23 14:32 UTC`` otherwise; '-' when unset."""
    if not timestamp:
        return "-"
    try:
        moment = datetime.fromisoformat(str(timestamp))
    except ValueError:
        return str(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return moment.strftime("%H:%M UTC" if moment.date() == today else "%Y-%m-%d %H:%M UTC")
