"""``ztb device ...``: the LAN devices of a home that grants may name."""

from __future__ import annotations

from typing import Annotated

import typer

from netpolicy import PolicyError
from netpolicy.validation import parse_address
from ztb.client.commands.common import (
    BrokerOption,
    CaCertOption,
    JsonOption,
    TokenOption,
    connect,
    emit,
    emit_created,
    table,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Manage a home's devices.")

HomeArgument = Annotated[str, typer.Argument(help="Home id or name.")]


@app.command("add")
def add_device(
    home: HomeArgument,
    name: Annotated[str, typer.Argument(help="Name used in grants, e.g. thermostat.")],
    ip: Annotated[str, typer.Option("--ip", help="The device's LAN address.")],
    mac: Annotated[str | None, typer.Option("--mac", help="aa:bb:cc:dd:ee:ff")] = None,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a device to a home and print its id."""
    try:
        parse_address(ip)
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ip") from None
    with connect(broker, token, ca_cert) as client:
        device = client.add_device(home, name, ip, mac)
    emit_created(
        as_json,
        device,
        str(device.get("id")),
        f"added {device.get('name')} {device.get('ip')} to {home}",
    )


@app.command("list")
def list_devices(
    home: HomeArgument,
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a home's devices."""
    with connect(broker, token, ca_cert) as client:
        devices = client.list_devices(home)
    rows = [
        (str(d.get("id")), str(d.get("name")), str(d.get("ip")), str(d.get("mac") or "-"))
        for d in devices
    ]
    emit(as_json, {"devices": devices}, table(("id", "name", "ip", "mac"), rows))


@app.command("remove")
def remove_device(
    home: HomeArgument,
    name: Annotated[str, typer.Argument(help="Device name or id.")],
    broker: BrokerOption = None,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a device from a home."""
    with connect(broker, token, ca_cert) as client:
        client.remove_device(home, name)
    emit(as_json, {"home": home, "device": name, "removed": True}, f"removed {name} from {home}")
