"""``ztb agent ...``: enroll, run the data plane (broker or file mode), tear it down.

Plain ``argparse`` rather than typer: the daemon lives on routers, and typer with click
costs ~5 MB of RSS for parsing a dozen options once. ``ztb.cli`` calls :func:`main` and
turns any exception into one line on stderr; :class:`UsageError` exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn, TextIO, TypeVar, get_args

from .desired_file import DesiredStateSource
from .events import log_event
from .nftables.backend import NftChoice
from .reconcile import InterfaceSpec, Reconciler
from .state_dir import StateDir
from .wireguard.backend import WireGuardChoice, WireGuardError, key_to_hex

PROG = "ztb agent"
ENROLL_TOKEN_ENV = "ZTB_ENROLL_TOKEN"  # noqa: S105 -- a variable name, not a secret
STDIN = "-"  # ``--token -``
_TOKEN_READ_LIMIT = 4096  # a token is ~120 characters; a file or pipe may hold anything
Number = TypeVar("Number", int, float)


class UsageError(Exception):
    """A bad command line; the dispatcher prints the message and exits with ``exit_code``."""

    exit_code = 2


class _Parser(argparse.ArgumentParser):
    """Raise instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _bounded(
    kind: type[Number], low: Number, high: Number | None = None
) -> Callable[[str], Number]:
    """An argparse type that parses with ``kind`` and refuses values outside low..high."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low:g}<=x<={high:g}" if high is not None else f"x>={low:g}"
            raise argparse.ArgumentTypeError(f"{value} is not in the range {bounds}")
        return value

    return parse


_PORT = _bounded(int, 1, 65535)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wireguard",
        choices=get_args(WireGuardChoice),
        default="auto",
        help="WireGuard backend (auto: kernel if usable; default: auto)",
    )
    parser.add_argument(
        "--nft",
        choices=get_args(NftChoice),
        default="auto",
        help="nftables backend (auto: lib if it loads; default: auto)",
    )


def build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Run the home agent on the router.", allow_abbrev=False)
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )

    run = commands.add_parser(
        "run",
        allow_abbrev=False,
        help="enforce a desired state until SIGTERM/SIGINT",
        description="Enforce a desired state until SIGTERM/SIGINT; the kernel keeps "
        "enforcing after.",
    )
    run.add_argument(
        "--desired-state",
        type=Path,
        metavar="FILE",
        help="desired-state JSON file to enforce (file mode)",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="enrolled state dir: follow the broker (broker mode)",
    )
    run.add_argument("--interface", metavar="IFNAME", help="WireGuard interface name (file mode)")
    run.add_argument(
        "--listen-port", type=_PORT, metavar="PORT", help="WireGuard UDP port (file mode)"
    )
    run.add_argument(
        "--private-key-file",
        type=Path,
        metavar="KEYFILE",
        help="the interface's private key (file mode)",
    )
    _add_backend_options(run)
    run.add_argument(
        "--status-file", type=Path, metavar="FILE", help="JSON status written after each apply"
    )
    run.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        type=_bounded(float, 0.01, 60.0),
        default=0.2,
        help="seconds between polls (default: 0.2)",
    )
    run.add_argument(
        "--resync-interval",
        metavar="SECONDS",
        type=_bounded(float, 1.0),
        default=30.0,
        help="seconds between full re-checks (default: 30)",
    )
    run.add_argument(
        "--report-interval",
        metavar="SECONDS",
        type=_bounded(float, 1.0),
        default=30.0,
        help="seconds between counter reports (default: 30)",
    )
    run.set_defaults(handler=_run)

    enroll = commands.add_parser(
        "enroll",
        allow_abbrev=False,
        help="enroll this router with the broker",
        description="Enroll this router with the broker: pin its CA, get a client certificate.",
    )
    enroll.add_argument(
        "--broker", required=True, metavar="URL", help="broker URL, https://HOST[:PORT]"
    )
    token = enroll.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="read the one-time token from 'ztb home enroll-token' from FILE",
    )
    token.add_argument(
        "--token",
        metavar="TOKEN",
        help="the token itself (shows in 'ps': prefer --token-file or ZTB_ENROLL_TOKEN), "
        "or - to read it from standard input",
    )
    enroll.add_argument(
        "--state-dir", type=Path, required=True, metavar="DIR", help="where to keep the identity"
    )
    enroll.add_argument(
        "--interface", required=True, metavar="IFNAME", help="WireGuard interface name"
    )
    enroll.add_argument(
        "--listen-port", type=_PORT, required=True, metavar="PORT", help="WireGuard UDP port"
    )
    enroll.add_argument(
        "--endpoint",
        required=True,
        metavar="HOST:PORT",
        help="HOST:PORT technicians reach this router at",
    )
    enroll.add_argument("--json", action="store_true", help="print one JSON object")
    enroll.set_defaults(handler=_enroll)

    teardown = commands.add_parser(
        "teardown",
        allow_abbrev=False,
        help="delete the WireGuard interface and table inet ztb",
        description="Delete the WireGuard interface, then table inet ztb; nothing else is touched.",
    )
    teardown.add_argument(
        "--interface", required=True, metavar="IFNAME", help="WireGuard interface"
    )
    _add_backend_options(teardown)
    teardown.add_argument("--json", action="store_true", help="print one JSON object")
    teardown.set_defaults(handler=_teardown)
    return parser


def main(argv: list[str]) -> int:
    """Parse ``argv`` (after ``agent``) and run the command; errors propagate as exceptions."""
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help printed; parse errors raise UsageError instead
        return exc.code if isinstance(exc.code, int) else 0
    handler: Callable[[argparse.Namespace], None] = args.handler
    handler(args)
    return 0


def read_private_key(path: Path) -> str:
    """The interface's private key file (``wg genkey`` output); it should be mode 0600."""
    try:
        text = path.read_text().strip()
        key_to_hex(text)
    except (OSError, WireGuardError) as exc:
        raise UsageError(f"{path}: not a readable WireGuard private key ({exc})") from None
    if path.stat().st_mode & 0o077:
        log_event("warning", message="private key file is readable by others", path=path)
    return text


def _file_interface(args: argparse.Namespace) -> InterfaceSpec:
    for option in ("interface", "listen_port", "private_key_file"):
        if getattr(args, option) is None:
            raise UsageError(f"--{option.replace('_', '-')} is required")
    return InterfaceSpec(args.interface, read_private_key(args.private_key_file), args.listen_port)


def _state_dir_interface(state: StateDir, args: argparse.Namespace) -> InterfaceSpec:
    """Interface, port and key as enrolled; flags that would contradict them are refused."""
    if any(getattr(args, o) is not None for o in ("interface", "listen_port", "private_key_file")):
        raise UsageError(
            "--interface, --listen-port and --private-key-file come from --state-dir; drop them"
        )
    config = state.read_config()
    return InterfaceSpec(config.interface, state.read_wg_private_key(), config.listen_port)


def _run(args: argparse.Namespace) -> None:
    """Enforce a desired state until SIGTERM/SIGINT; the kernel keeps enforcing after."""
    desired_state: Path | None = args.desired_state
    state_dir: Path | None = args.state_dir
    if (desired_state is None) == (state_dir is None):
        raise UsageError("give exactly one of --desired-state FILE or --state-dir DIR")
    from .nftables.backend import make_nft
    from .runner import Reporter, Runner
    from .wireguard.select import make_wireguard

    stop = threading.Event()
    source: DesiredStateSource
    reporter: Reporter | None = None
    start_source: Callable[[], None] | None = None
    if desired_state is not None:
        from .desired_file import DesiredStateFile

        spec = _file_interface(args)
        source = DesiredStateFile(desired_state, sleep=stop.wait)
    else:
        assert state_dir is not None
        from .broker_link.source import BrokerSource

        state = StateDir(state_dir)
        spec = _state_dir_interface(state, args)
        broker = BrokerSource(state, stop)
        source, reporter, start_source = broker, broker.report, broker.start
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    reconciler = Reconciler(make_wireguard(spec.name, args.wireguard), make_nft(args.nft), spec)
    log_event(
        "start",
        pid=os.getpid(),
        interface=spec.name,
        wireguard=reconciler.wireguard.kind,
        nft=reconciler.nft.kind,
        source=desired_state or f"broker via {state_dir}",
    )
    if start_source is not None:
        start_source()
    runner = Runner(
        reconciler,
        source,
        stop,
        args.status_file,
        args.poll_interval,
        args.resync_interval,
        reporter=reporter,
        report_interval=args.report_interval,
    )
    runner.run()


def _enroll(args: argparse.Namespace) -> None:
    """Enroll this router with the broker: pin its CA, get a client certificate."""
    from .broker_link.enroll import (
        enroll as enroll_agent,  # cryptography: loaded for this command only
    )

    state_dir: Path = args.state_dir
    token = enrollment_token(args.token, args.token_file, os.environ, sys.stdin)
    config = enroll_agent(
        args.broker, token, state_dir, args.interface, args.listen_port, args.endpoint
    )
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
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"enrolled agent {config.agent_id} of home {config.home_id}; "
            f"certificate valid until {result['certificate_expires_at']}; "
            f"run: ztb agent run --state-dir {state_dir}"
        )


def enrollment_token(
    token: str | None, token_file: Path | None, environ: Mapping[str, str], stdin: TextIO
) -> str:
    """The enrollment token from ``--token-file``, ``--token -`` (stdin), ``--token`` or
    ``ZTB_ENROLL_TOKEN``, in that order of preference.

    A token on the command line is visible to every user of the router through ``ps`` and
    ``/proc/PID/cmdline`` while enrollment runs; a file, standard input or the environment
    (``/proc/PID/environ`` is readable by the same user only) is not.
    """
    if token_file is not None:
        try:
            text = token_file.read_text()[:_TOKEN_READ_LIMIT]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file {token_file}: cannot read it ({exc})") from None
        where = f"--token-file {token_file}"
    elif token == STDIN:
        text, where = stdin.read(_TOKEN_READ_LIMIT), "standard input"
    elif token is not None:
        text, where = token, "--token"
    elif environ.get(ENROLL_TOKEN_ENV) is not None:
        text, where = environ[ENROLL_TOKEN_ENV], ENROLL_TOKEN_ENV
    else:
        raise UsageError(
            f"give the enrollment token with --token-file FILE, {ENROLL_TOKEN_ENV}, "
            "or --token - (standard input)"
        )
    if not text.strip():
        raise UsageError(f"the enrollment token from {where} is empty")
    return text.strip()


def _teardown(args: argparse.Namespace) -> None:
    """Delete the WireGuard interface, then ``table inet ztb``; nothing else is touched."""
    from .nftables.backend import delete_table, make_nft
    from .wireguard.select import make_wireguard

    interface: str = args.interface
    # The interface goes first: with it gone no tunnel packet can slip past a missing table.
    interface_removed = make_wireguard(interface, args.wireguard, probe=False).delete_interface()
    table_removed = delete_table(make_nft(args.nft))
    result = {"interface": interface, "interface_removed": interface_removed}
    result["table_removed"] = table_removed
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"interface {interface}: {'removed' if interface_removed else 'not present'}; "
            f"table inet ztb: {'removed' if table_removed else 'not present'}"
        )
