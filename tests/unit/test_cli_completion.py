"""``source <(ztb completion)`` in a real bash completes every command group."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ztb.cli import GROUPS

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def completions(*words: str) -> list[str]:
    """What bash offers with the cursor on the last of ``words`` (``""`` = after a space)."""
    if shutil.which("bash") is None:
        pytest.fail("bash is needed for the completion test")
    assert (BIN / "ztb").exists(), "the ztb script is not installed next to this python"
    script = (
        "source <(ztb completion) || exit 9\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in ('ztb', *words))})\n"
        f"COMP_CWORD={len(words)}\n"
        "_ztb_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    # The lab group ships only in the source tree (not in the wheel): put it on the path.
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line]


def test_groups_and_global_options() -> None:
    assert completions("") == [*GROUPS, "--help", "--version"]
    assert completions("se") == ["session"]


@pytest.mark.parametrize(
    ("group", "some_commands"),
    [
        ("agent", {"enroll", "run", "teardown"}),
        ("broker", {"serve", "bootstrap"}),
        ("user", {"create", "list", "token", "totp", "whoami"}),
        ("home", {"create", "enroll-token", "show"}),
        ("device", {"add", "list", "remove"}),
        ("session", {"request", "approve", "config", "report"}),
        ("audit", {"verify", "export"}),
        ("lab", {"up", "down", "demo"}),
    ],
)
def test_every_group_offers_its_commands(group: str, some_commands: set[str]) -> None:
    offered = set(completions(group, ""))
    assert some_commands <= offered, offered


def test_options_choices_and_nested_groups() -> None:
    assert {"--home", "--state", "--json", "--broker"} <= set(completions("session", "list", "--"))
    assert completions("user", "create", "a@b", "--role", "") == [
        "admin",
        "homeowner",
        "technician",
    ]
    assert completions("user", "token", "") == ["create", "list", "revoke"]
    assert completions("agent", "run", "--wireguard", "") == ["auto", "kernel", "userspace"]
    assert "--state-dir" in completions("agent", "enroll", "--st")
    # A value with no fixed choices is left to bash's file completion.
    assert completions("session", "config", "ses_x", "--output", "") == []
