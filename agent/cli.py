"""``ztb agent ...``: enroll, run the data plane (broker or file mode), tear it down."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .desired_file import DesiredStateSource
from .events import log_event
from .reconcile import Agent, InterfaceSpec
from .state_dir import StateDir
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


def _file_interface(
    interface: str | None, listen_port: int | None, private_key_file: Path | None
) -> InterfaceSpec:
    _required(interface, "--interface")
    _required(listen_port, "--listen-port")
    _required(private_key_file, "--private-key-file")
    assert interface and listen_port and private_key_file
    return InterfaceSpec(interface, read_private_key(private_key_file), listen_port)


def _state_dir_interface(state: StateDir, *given: object) -> InterfaceSpec:
    """Interface, port and key as enrolled; flags that would contradict them are refused."""
    if any(value is not None for value in given):
        raise typer.BadParameter(
            "--interface, --listen-port and --private-key-file come from --state-dir; drop them"
        )
    config = state.read_config()
    return InterfaceSpec(config.interface, state.read_wg_private_key(), config.listen_port)


@app.command()
def run(
    desired_state: Annotated[
        Path | None,
        typer.Option("--desired-state", help="desired-state JSON file to enforce (file mode)"),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="enrolled state dir: follow the broker (broker mode)"),
    ] = None,
    interface: Annotated[
        str | None, typer.Option("--interface", help="WireGuard interface name (file mode)")
    ] = None,
    listen_port: Annotated[
        int | None,
        typer.Option("--listen-port", min=1, max=65535, help="WireGuard UDP port (file mode)"),
    ] = None,
    private_key_file: Annotated[
        Path | None,
        typer.Option("--private-key-file", help="the interface's private key (file mode)"),
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
    report_interval: Annotated[
        float,
        typer.Option("--report-interval", min=1, help="seconds between counter reports"),
    ] = 30.0,
) -> None:
    """Enforce a desired state until SIGTERM/SIGINT; the kernel keeps enforcing after."""
    if (desired_state is None) == (state_dir is None):
        raise typer.BadParameter("give exactly one of --desired-state FILE or --state-dir DIR")
    from .nft_backend import make_nft
    from .runner import Reporter, Runner
    from .wg_select import make_wireguard

    stop = threading.Event()
    source: DesiredStateSource
    reporter: Reporter | None = None
    start_source: Callable[[], None] | None = None
    if desired_state is not None:
        from .desired_file import DesiredStateFile

        spec = _file_interface(interface, listen_port, private_key_file)
        source = DesiredStateFile(desired_state, sleep=stop.wait)
    else:
        assert state_dir is not None
        # httpx imports its command-line module (and with it rich, ~5 MB RSS) unless that
        # module is already known; the daemon never uses httpx's CLI, so mark it absent.
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
        from .broker_source import BrokerSource

        state = StateDir(state_dir)
        spec = _state_dir_interface(state, interface, listen_port, private_key_file)
        broker = BrokerSource(state, stop)
        source, reporter, start_source = broker, broker.report, broker.start
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = Agent(make_wireguard(spec.name, wireguard.value), make_nft(nft.value), spec)
    log_event(
        "start",
        pid=os.getpid(),
        interface=spec.name,
        wireguard=agent.wireguard.kind,
        nft=agent.nft.kind,
        source=desired_state or f"broker via {state_dir}",
    )
    if start_source is not None:
        start_source()
    runner = Runner(
        agent,
        source,
        stop,
        status_file,
        poll_interval,
        resync_interval,
        reporter=reporter,
        report_interval=report_interval,
    )
    runner.run()


@app.command()
def enroll(
    broker: Annotated[str, typer.Option("--broker", help="broker URL, https://HOST[:PORT]")],
    token: Annotated[
        str, typer.Option("--token", help="one-time token from 'ztb home enroll-token'")
    ],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="where to keep the identity")],
    interface: Annotated[str, typer.Option("--interface", help="WireGuard interface name")],
    listen_port: Annotated[
        int, typer.Option("--listen-port", min=1, max=65535, help="WireGuard UDP port")
    ],
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="HOST:PORT technicians reach this router at")
    ],
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Enroll this router with the broker: pin its CA, get a client certificate."""
    from .enroll import enroll as enroll_agent  # cryptography: loaded for this command only

    config = enroll_agent(broker, token, state_dir, interface, listen_port, endpoint)
    validity = StateDir(state_dir).read_validity()
    result = {
        "agent_id": config.agent_id,
        "home_id": config.home_id,
        "interface": config.interface,
        "listen_port": config.listen_port,
        "endpoint": config.endpoint,
        "state_dir": str(state_dir),
        "certificate_expires_at": validity.not_after.isoformat(),
    }
    if json_output:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"enrolled agent {config.agent_id} of home {config.home_id}; "
            f"certificate valid until {result['certificate_expires_at']}; "
            f"run: ztb agent run --state-dir {state_dir}"
        )


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
