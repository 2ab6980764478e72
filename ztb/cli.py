"""Dispatch ``ztb GROUP ...`` to the group's module, importing only that group.

Only the group that runs is imported, so ``ztb agent run`` on a router never loads the
broker's FastAPI or SQLAlchemy. A group module exposes either a typer ``app`` or a plain
``main(argv) -> int`` (the agent, whose RSS budget has no room for typer and click);
typer is imported only for typer groups. Every failure leaves as one line on stderr (one
JSON object when the command line has ``--json``) and an exit status from
:mod:`ztb.exit_codes`; ``ZTB_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ztb.exit_codes import ExitCode

# group name -> (module holding ``app`` or ``main``, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "agent": ("agent.cli", "run the home agent on the router"),
    "broker": ("broker.cli.server", "run or bootstrap the broker service"),
    "user": ("ztb.client.commands.users", "manage users and their tokens"),
    "home": ("ztb.client.commands.homes", "manage homes and agent enrollment"),
    "device": ("ztb.client.commands.devices", "manage a home's devices"),
    "session": ("ztb.client.commands.sessions", "request, approve and end access sessions"),
    "audit": ("ztb.client.commands.audit", "verify and export the audit chain"),
    "relay": ("broker.relay.cli", "relay WireGuard paths for homes behind NAT"),
    "login": ("ztb.client.commands.login", "keep your broker, token and CA in your profile"),
    "ca": ("ztb.client.commands.ca", "fetch the broker's CA certificate and pin it"),
    "lab": ("lab.cli", "network-namespace lab: up, down, demo"),
    "completion": ("ztb.completion", "print the bash completion script"),
}


# Set by the bash completion script (``ztb completion``) when it asks for candidates.
COMPLETE_VAR = "_ZTB_COMPLETE"


def _usage() -> str:
    lines = ["usage: ztb GROUP COMMAND [ARGS]...", "       ztb --version", "", "groups:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", "Run 'ztb GROUP --help' for the commands of a group."]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ztb")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _Failure:
    """Where a failure is reported: a line for a person, or JSON when ``--json`` was asked."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(
        self, message: str, code: int = ExitCode.FAILURE, status: int | None = None
    ) -> int:
        first_line = (message.strip().splitlines() or ["failed"])[0]
        if self.as_json:
            import json

            report: dict[str, object] = {"error": first_line, "exit_code": int(code)}
            if status is not None:
                report["status"] = status
            print(json.dumps(report), file=sys.stderr)
        else:
            print(f"ztb: error: {first_line}", file=sys.stderr)
        return int(code)


def _exit_code_for(exc: Exception, group: str, fail: _Failure) -> int:
    """Map an exception to an exit code, printing at most one line.

    typer vendors its own copy of click, so its exceptions are recognised by shape
    (``exit_code``, with ``format_message`` when there is one) rather than by class; plain
    groups raise exceptions of the same shape for usage errors.
    """
    name = type(exc).__name__
    code = getattr(exc, "exit_code", None)
    if name == "Exit":
        return int(code or 0)
    if name == "Abort":
        return fail("aborted", ExitCode.INTERRUPTED)
    if name == "NoArgsIsHelpError":
        return 2  # the group's help was just printed
    if isinstance(code, int):
        format_message = getattr(exc, "format_message", None)
        status = getattr(exc, "status", None)
        message = format_message() if callable(format_message) else exc
        return fail(str(message), code, status if isinstance(status, int) else None)
    if isinstance(exc, ModuleNotFoundError):
        return fail(f"'ztb {group}' needs a missing dependency ({exc.name}); install ztb[{group}]")
    return fail(str(exc) or name)


def _run_group(module: ModuleType, group: str, args: list[str]) -> object:
    """Run a plain group's ``main`` or, importing typer only then, a typer group's ``app``."""
    if not hasattr(module, "app"):
        plain_main: Callable[[list[str]], int] = module.main
        return plain_main(args)
    import typer

    app, prog = module.app, f"ztb {group}"
    if args and (single := _only_command(app, args[0])) is not None:
        app, prog, args = single, f"{prog} {args[0]}", args[1:]
    command = typer.main.get_command(app)
    return command.main(args=args, prog_name=prog, standalone_mode=False)


def _only_command(app: Any, name: str) -> Any | None:
    """A typer app holding just the command ``name`` of ``app``, or None if it has none.

    typer reads the signature of every command in a group to build it; building only the
    one that runs keeps ``ztb session list`` from paying for the other nine.
    """
    import typer

    chosen = [
        info
        for info in app.registered_commands
        if (info.name or typer.main.get_command_name(info.callback.__name__)) == name
    ]
    if len(chosen) != 1:
        return None
    single = typer.Typer(add_completion=False)
    single.registered_commands = chosen
    return single


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(COMPLETE_VAR):
        from ztb.completion import complete

        return complete(GROUPS, args)
    fail = _Failure("--json" in args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return ExitCode.OK if args else ExitCode.USAGE
    if args[0] == "--version":
        print(f"ztb {_version()}")
        return ExitCode.OK
    group = args[0]
    if group not in GROUPS:
        return fail(f"unknown command group {group!r} (try: {', '.join(GROUPS)})", ExitCode.USAGE)
    module_name = GROUPS[group][0]
    try:
        result = _run_group(importlib.import_module(module_name), group, args[1:])
    except KeyboardInterrupt:
        return fail("interrupted", ExitCode.INTERRUPTED)
    except Exception as exc:  # the contract: never a traceback, one line and non-zero
        if os.environ.get("ZTB_DEBUG"):
            import traceback

            traceback.print_exc()
        return _exit_code_for(exc, group, fail)
    return result if isinstance(result, int) else 0
