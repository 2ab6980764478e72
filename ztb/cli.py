"""Dispatch ``ztb GROUP ...`` to the group's typer app, importing only that group.

Only the group that runs is imported, so ``ztb agent run`` on a router never loads the
broker's FastAPI or SQLAlchemy. Every failure leaves as one line on stderr and a non-zero
exit; ``ZTB_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

# group name -> (module holding ``app``, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "agent": ("agent.cli", "run the home agent on the router"),
    "broker": ("broker.cli.server", "run or bootstrap the broker service"),
    "user": ("broker.cli.users", "manage users and their tokens"),
    "home": ("broker.cli.homes", "manage homes and agent enrollment"),
    "device": ("broker.cli.devices", "manage a home's devices"),
    "session": ("broker.cli.sessions", "request, approve and end access sessions"),
    "audit": ("broker.cli.audit", "verify and export the audit chain"),
    "lab": ("lab.cli", "network-namespace lab: up, down, demo"),
}


def _usage() -> str:
    lines = ["usage: ztb GROUP COMMAND [ARGS]...", "", "groups:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", "Run 'ztb GROUP --help' for the commands of a group."]
    return "\n".join(lines)


def _fail(message: str, code: int = 1) -> int:
    first_line = (message.strip().splitlines() or ["failed"])[0]
    print(f"ztb: error: {first_line}", file=sys.stderr)
    return code


def _exit_code_for(exc: Exception, group: str) -> int:
    """Map an exception to an exit code, printing at most one line.

    typer vendors its own copy of click, so its exceptions are recognised by shape
    (``exit_code`` + ``format_message``) rather than by class.
    """
    name = type(exc).__name__
    code = getattr(exc, "exit_code", None)
    if name == "Exit":
        return int(code or 0)
    if name == "Abort":
        return _fail("aborted", 130)
    if name == "NoArgsIsHelpError":
        return 2  # the group's help was just printed
    format_message = getattr(exc, "format_message", None)
    if isinstance(code, int) and callable(format_message):
        return _fail(str(format_message()), code)
    if isinstance(exc, ModuleNotFoundError):
        return _fail(f"'ztb {group}' needs a missing dependency ({exc.name}); install ztb[{group}]")
    return _fail(str(exc) or name)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    group = args[0]
    if group not in GROUPS:
        return _fail(f"unknown command group {group!r} (try: {', '.join(GROUPS)})", 2)
    module_name = GROUPS[group][0]
    try:
        app: typer.Typer = importlib.import_module(module_name).app
        command = typer.main.get_command(app)
        result = command.main(args=args[1:], prog_name=f"ztb {group}", standalone_mode=False)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # the contract: never a traceback, one line and non-zero
        if os.environ.get("ZTB_DEBUG"):
            traceback.print_exc()
        return _exit_code_for(exc, group)
    return result if isinstance(result, int) else 0
