"""``ztb agent ...``: run the data plane from a desired-state source, or tear it down."""

from __future__ import annotations

import json
import os
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .events import log_event
from .wg_backend import WireGuardError, key_to_hex

app = typer.Typer(
    help="Run the home agent on the router.", no_args_is_help=True, add_completion=False
)


class WireGuardMode(StrEnum):
    auto = "auto"
    kernel = "kernel"
    userspace = "userspace"


class NftMode(StrEnum):
    auto = "auto"
    lib = "lib"
    binary = "binary"


WireGuardOption = Annotated[
    WireGuardMode, typer.Option("--wireguard", help="WireGuard backend (auto: kernel if usable)")
]
NftOption = Annotated[NftMode, typer.Option("--nft", help="nftables backend (auto: lib if loads)")]


def read_private_key(path: Path) -> str:
    """The interface's private key file (``wg genkey`` output); it should be mode 0600."""
    try:
        text = path.read_text().strip()
        key_to_hex(text)
    except (OSError, WireGuardError) as exc:
        raise typer.BadParameter(f"{path}: not a readable WireGuard private key ({exc})") from None
    if path.stat().st_mode & 0o077:
        log_event("warning", message="private key file is readable by others", path=path)
    return text


def _required(value: object, option: str) -> None:
    if value is None:
        raise typer.BadParameter(f"{option} is required")


@app.command()
def run(
    desired_state: Annotated[
        Path | None,
        typer.Option("--desired-state", help="desired-state JSON file to enforce (file mode)"),
    ] = None,
    interface: Annotated[
        str | None, typer.Option("--interface", help="WireGuard interface name")
    ] = None,
    listen_port: Annotated[
        int | None, typer.Option("--listen-port", min=1, max=65535, help="WireGuard UDP port")
    ] = None,
    private_key_file: Annotated[
        Path | None, typer.Option("--private-key-file", help="the interface's private key")
    ] = None,
    wireguard: WireGuardOption = WireGuardMode.auto,
    nft: NftOption = NftMode.auto,
    status_file: Annotated[
        Path | None, typer.Option("--status-file", help="JSON status written after each apply")
    ] = None,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.01, max=60, help="seconds between polls")
    ] = 0.2,
    resync_interval: Annotated[
        float, typer.Option("--resync-interval", min=1, help="seconds between full re-checks")
    ] = 30.0,
) -> None:
    """Enforce a desired state until SIGTERM/SIGINT; the kernel keeps enforcing after."""
    _required(desired_state, "--desired-state")
    _required(interface, "--interface")
    _required(listen_port, "--listen-port")
    _required(private_key_file, "--private-key-file")
    assert desired_state and interface and listen_port and private_key_file
    from .desired_file import DesiredStateFile
    from .nft_backend import make_nft
    from .reconcile import Agent, InterfaceSpec
    from .runner import Runner
    from .wg_select import make_wireguard

    spec = InterfaceSpec(interface, read_private_key(private_key_file), listen_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = Agent(make_wireguard(interface, wireguard.value), make_nft(nft.value), spec)
    log_event(
        "start",
        pid=os.getpid(),
        interface=interface,
        wireguard=agent.wireguard.kind,
        nft=agent.nft.kind,
        source=desired_state,
    )
    source = DesiredStateFile(desired_state, sleep=stop.wait)
    Runner(agent, source, stop, status_file, poll_interval, resync_interval).run()


@app.command()
def teardown(
    interface: Annotated[str, typer.Option("--interface", help="WireGuard interface")],
    wireguard: WireGuardOption = WireGuardMode.auto,
    nft: NftOption = NftMode.auto,
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Delete the WireGuard interface, then ``table inet ztb``; nothing else is touched."""
    from .nft_backend import delete_table, make_nft
    from .wg_select import make_wireguard

    # The interface goes first: with it gone no tunnel packet can slip past a missing table.
    interface_removed = make_wireguard(interface, wireguard.value, probe=False).delete_interface()
    table_removed = delete_table(make_nft(nft.value))
    result = {"interface": interface, "interface_removed": interface_removed}
    result["table_removed"] = table_removed
    if json_output:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"interface {interface}: {'removed' if interface_removed else 'not present'}; "
            f"table inet ztb: {'removed' if table_removed else 'not present'}"
        )
