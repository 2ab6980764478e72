"""``ztb device ...``: the LAN devices of a home that grants may name."""

from __future__ import annotations

from typing import Annotated

import typer

from netpolicy import PolicyError
from netpolicy.validation import parse_address
from ztb.client.commands.common import (
    Connection,
    with_connection,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Manage a home's devices.")

HomeArgument = Annotated[str, typer.Argument(help="Home id or name.")]


@app.command("add")
@with_connection()
def add_device(
    conn: Connection,
    home: HomeArgument,
    name: Annotated[str, typer.Argument(help="Name used in grants, e.g. thermostat.")],
    ip: Annotated[str, typer.Option("--ip", help="The device's LAN address.")],
    mac: Annotated[str | None, typer.Option("--mac", help="aa:bb:cc:dd:ee:ff")] = None,
) -> None:
    """Add a device to a home and print its id."""
    try:
        parse_address(ip)
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ip") from None
    device = conn.call(lambda client: client.add_device(home, name, ip, mac))
    conn.emit_created(
        device,
        str(device.get("id")),
        f"added {device.get('name')} {device.get('ip')} to {home}",
    )


@app.command("list")
@with_connection()
def list_devices(
    conn: Connection,
    home: HomeArgument,
) -> None:
    """List a home's devices."""
    devices = conn.call(lambda client: client.list_devices(home))
    conn.emit_rows(
        "devices",
        devices,
        ("id", "name", "ip", "mac"),
        lambda d: (
            str(d.get("id")),
            str(d.get("name")),
            str(d.get("ip")),
            str(d.get("mac") or "-"),
        ),
    )


@app.command("remove")
@with_connection()
def remove_device(
    conn: Connection,
    home: HomeArgument,
    name: Annotated[str, typer.Argument(help="Device name or id.")],
) -> None:
    """Remove a device from a home."""
    conn.call(lambda client: client.remove_device(home, name))
    conn.emit({"home": home, "device": name, "removed": True}, f"removed {name} from {home}")
