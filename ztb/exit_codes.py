"""The exit statuses every ``ztb`` command uses, so scripts can tell failures apart.

Documented for people in docs/cli.md. Standard library only: the dispatcher and the
router's agent import it too.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: Anything not listed below: the broker failed (5xx), the audit chain is broken, ...
    FAILURE = 1
    #: The command line or its input is wrong: a local check, or the broker's 400/422.
    USAGE = 2
    #: Not found or not allowed (HTTP 401, 403, 404). The broker answers 404 for what you
    #: may not see, so the two cannot be told apart on purpose.
    NOT_FOUND_OR_FORBIDDEN = 3
    #: The change clashes with the current state (HTTP 409), e.g. approving an ended session.
    CONFLICT = 4
    #: No connection to the broker: refused, no route, name not found, TLS not trusted.
    UNREACHABLE = 5
    #: The broker took longer than the client's timeout to answer.
    TIMEOUT = 6
    #: Ctrl-C.
    INTERRUPTED = 130


def for_http_status(status: int) -> ExitCode:
    """The exit status for a broker's error answer."""
    if status in (400, 422):
        return ExitCode.USAGE
    if status in (401, 403, 404):
        return ExitCode.NOT_FOUND_OR_FORBIDDEN
    if status == 409:
        return ExitCode.CONFLICT
    if status in (408, 504):
        return ExitCode.TIMEOUT
    return ExitCode.FAILURE
