"""Dispatch ``ztb GROUP ...`` to the group's module, importing only that group.

Only the group that runs is imported, so ``ztb agent run`` on a router never loads the
broker's FastAPI or SQLAlchemy. A group module exposes either a typer ``app`` or a plain
``main(argv) -> int`` (the agent, whose RSS budget has no room for typer and click);
typer is imported only for typer groups. Every failure leaves as one line on stderr and a
non-zero exit; ``ZTB_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType

# group name -> (module holding ``app`` or ``main``, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "agent": ("agent.cli", "run the home agent on the router"),
    "broker": ("broker.cli.server", "run or bootstrap the broker service"),
    "user": ("ztb.client.commands.users", "manage users and their tokens"),
    "home": ("ztb.client.commands.homes", "manage homes and agent enrollment"),
    "device": ("ztb.client.commands.devices", "manage a home's devices"),
    "session": ("ztb.client.commands.sessions", "request, approve and end access sessions"),
    "audit": ("ztb.client.commands.audit", "verify and export the audit chain"),
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
    (``exit_code``, with ``format_message`` when there is one) rather than by class; plain
    groups raise exceptions of the same shape for usage errors.
    """
    name = type(exc).__name__
    code = getattr(exc, "exit_code", None)
    if name == "Exit":
        return int(code or 0)
    if name == "Abort":
        return _fail("aborted", 130)
    if name == "NoArgsIsHelpError":
        return 2  # the group's help was just printed
    if isinstance(code, int):
        format_message = getattr(exc, "format_message", None)
        return _fail(str(format_message() if callable(format_message) else exc), code)
    if isinstance(exc, ModuleNotFoundError):
        return _fail(f"'ztb {group}' needs a missing dependency ({exc.name}); install ztb[{group}]")
    return _fail(str(exc) or name)


def _run_group(module: ModuleType, group: str, args: list[str]) -> object:
    """Run a plain group's ``main`` or, importing typer only then, a typer group's ``app``."""
    if not hasattr(module, "app"):
        plain_main: Callable[[list[str]], int] = module.main
        return plain_main(args)
    import typer

    command = typer.main.get_command(module.app)
    return command.main(args=args, prog_name=f"ztb {group}", standalone_mode=False)


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
        result = _run_group(importlib.import_module(module_name), group, args[1:])
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # the contract: never a traceback, one line and non-zero
        if os.environ.get("ZTB_DEBUG"):
            traceback.print_exc()
        return _exit_code_for(exc, group)
    return result if isinstance(result, int) else 0
