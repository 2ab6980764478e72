"""What a test needs from the machine, and the one policy for when it is missing.

Locally a missing prerequisite (root, a tool, chromium, PostgreSQL) skips the test with the
reason; under ``CI=true`` it fails it, so CI never reports a skip as a pass. ``.ci/run``
exports ``CI=true`` itself, so the policy does not depend on the runner setting it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import NoReturn

import pytest


def missing_tools(tools: Iterable[str]) -> list[str]:
    """The programs of ``tools`` that are not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason`` locally; fail under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)
