"""``ztb relay ...``: run a relay.

Plain ``argparse`` like the agent's command: a relay host needs neither typer nor the
broker's web stack. ``ztb.cli`` calls :func:`main` and turns any exception into one line
on stderr; :class:`UsageError` exits with 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from broker import jsonlog

from .path import DEFAULT_BYTES_PER_S, DEFAULT_PACKETS_PER_S, Limits
from .serve import PathsFile, RelayOptions, serve_forever

PROG = "ztb relay"
DEFAULT_PORT_COUNT = 2000  # two per path: 1,000 paths


class UsageError(Exception):
    exit_code = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _parser() -> _Parser:
    parser = _Parser(prog=PROG)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="forward WireGuard packets of relay paths")
    serve.add_argument(
        "--listen",
        type=_host_port,
        required=True,
        help="address and first UDP port of the path ports (HOST:PORT)",
    )
    serve.add_argument("--ports", type=_positive, default=DEFAULT_PORT_COUNT, dest="port_count")
    serve.add_argument("--paths-file", type=Path, required=True, help="relay document (JSON)")
    serve.add_argument("--metrics", type=_host_port, help="serve /metrics on HOST:PORT")
    serve.add_argument("--packets-per-s", type=_positive, default=DEFAULT_PACKETS_PER_S)
    serve.add_argument("--bytes-per-s", type=_positive, default=DEFAULT_BYTES_PER_S)
    serve.add_argument(
        "--no-kernel",
        action="store_true",
        help="forward every packet in this process (no nftables hand-off)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    host, first_port = args.listen
    if first_port + args.port_count > 65536:
        raise UsageError(f"--ports {args.port_count} from {first_port} runs past port 65535")
    options = RelayOptions(
        host=host,
        first_port=first_port,
        port_count=args.port_count,
        metrics=args.metrics,
        limits=Limits(args.packets_per_s, args.bytes_per_s),
        kernel=not args.no_kernel,
    )
    jsonlog.configure()
    serve_forever(options, PathsFile(args.paths_file))
    return 0
