"""``ztb completion``: bash completion for every command group, from the groups themselves.

The script asks ``ztb`` for candidates (``_ZTB_COMPLETE=bash``), so what is offered always
matches the installed commands: typer groups are read through their click command tree,
plain ``argparse`` groups (the agent) through the parser their ``build_parser()`` returns.
Words that need a value (ids, names, files) are left to bash's default file completion.
Load it with ``source <(ztb completion)``; zsh can use it after
``autoload -U bashcompinit && bashcompinit``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

SCRIPT = """\
_ztb_complete() {
    local IFS=$'\\n'
    COMPREPLY=($(_ZTB_COMPLETE=bash _ZTB_CWORD="$COMP_CWORD" \\
        "${COMP_WORDS[0]}" "${COMP_WORDS[@]:1}" 2>/dev/null))
}
complete -o default -F _ztb_complete ztb
"""
USAGE = "usage: ztb completion [bash]   (then: source <(ztb completion))"


def main(argv: list[str]) -> int:
    """Print the completion script for bash (the only shell supported)."""
    if argv in ([], ["bash"]):
        sys.stdout.write(SCRIPT)
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    raise _UsageError(f"unsupported shell {argv[0]!r}: only bash ({USAGE})")


class _UsageError(Exception):
    exit_code = 2


def complete(groups: Mapping[str, tuple[str, str]], args: list[str]) -> int:
    """Print the candidates for the word at ``$_ZTB_CWORD``, one per line, never failing."""
    try:
        position = int(os.environ.get("_ZTB_CWORD", len(args) + 1)) - 1
    except ValueError:
        return 0
    before, word = args[:position], (args[position] if position < len(args) else "")
    try:
        candidates = list(_candidates(groups, before, word))
    except Exception:  # a broken group must not spill a traceback into the shell prompt
        candidates = []
    print("\n".join(c for c in candidates if c.startswith(word)))
    return 0


def _candidates(
    groups: Mapping[str, tuple[str, str]], before: list[str], word: str
) -> Iterable[str]:
    if not before:
        return [*groups, "--help", "--version"]
    if before[0] not in groups:
        return []
    module = importlib.import_module(groups[before[0]][0])
    if hasattr(module, "app"):
        import typer

        return _click_candidates(typer.main.get_command(module.app), before[1:], word)
    build_parser = getattr(module, "build_parser", None)
    if build_parser is None:
        return []
    return _argparse_candidates(build_parser(), before[1:], word)


def _click_candidates(command: Any, before: list[str], word: str) -> list[str]:
    """Subcommands of the innermost group named so far, else the options of the command."""
    for part in before:
        subcommands = getattr(command, "commands", None)
        if subcommands and part in subcommands:
            command = subcommands[part]
    options = {opt: param for param in command.params for opt in _click_opts(param)}
    if before and (param := options.get(before[-1])) is not None and _click_takes_value(param):
        return [str(choice) for choice in getattr(param.type, "choices", None) or ()]
    subcommands = getattr(command, "commands", None)
    if subcommands and not word.startswith("-"):
        return sorted(name for name, sub in subcommands.items() if not sub.hidden)
    return [*options, "--help"]


def _click_opts(param: Any) -> list[str]:
    if getattr(param, "param_type_name", "") != "option" or param.hidden:
        return []
    return [*param.opts, *param.secondary_opts]


def _click_takes_value(param: Any) -> bool:
    return not (param.is_flag or param.count)


def _argparse_candidates(
    parser: argparse.ArgumentParser, before: list[str], word: str
) -> list[str]:
    """The same for an ``argparse`` group: subcommands, an option's choices, or options."""
    for part in before:
        subparsers = _subcommands(parser)
        if part in subparsers:
            parser = subparsers[part]
    options = {opt: action for action in parser._actions for opt in action.option_strings}
    if before and (action := options.get(before[-1])) is not None and action.nargs != 0:
        return [str(choice) for choice in action.choices or ()]
    subparsers = _subcommands(parser)
    if subparsers and not word.startswith("-"):
        return sorted(subparsers)
    return list(options)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
