"""One log line per event on stderr, as ``key=value`` pairs (logfmt) that grep and jq-like
tools can read without a logging framework on the router."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-+@,")


def _quote(value: object) -> str:
    text = str(value)
    if text and all(char in _BARE for char in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def format_event(event: str, fields: dict[str, object]) -> str:
    pairs = [f"ts={time.time():.3f}", f"event={_quote(event)}"]
    pairs += [f"{key}={_quote(value)}" for key, value in fields.items()]
    return " ".join(pairs)


def log_event(event: str, stream: TextIO | None = None, **fields: object) -> None:
    """Write ``ts=... event=NAME key=value ...`` as one line and flush it at once."""
    out = stream if stream is not None else sys.stderr
    out.write(format_event(event, fields) + "\n")
    out.flush()
