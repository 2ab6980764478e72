"""The `ztb` dispatcher: every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ztb.cli import GROUPS, main


def test_help_lists_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(group in out for group in GROUPS)


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["nope"], 2, "unknown command group"),
        (["session", "show"], 2, "Missing argument"),
        (["session", "show", "--bogus"], 2, "No such option"),
        (["agent", "run", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["agent", "run", "--listen-port", "0"], 2, "--listen-port: 0 is not in the range"),
        (["agent", "enroll", "--broker", "https://x"], 2, "required: --state-dir"),
        (["agent", "teardown", "--interface", "bad name!"], 1, "interface name"),
        (
            [
                "session",
                "request",
                "--home",
                "h",
                "--grant",
                "bad",
                "--duration",
                "5m",
                "--reason",
                "r",
                "--broker",
                "http://127.0.0.1:9",
                "--token",
                "t",
            ],
            2,
            "--grant",
        ),
    ],
)
def test_errors_are_one_line(
    argv: list[str], code: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ztb: error: ") and needle in err
    assert "Traceback" not in err


def test_a_plain_group_prints_help_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--help"]) == 0
    assert "teardown" in capsys.readouterr().out
    assert main(["agent", "run", "--help"]) == 0
    assert "--desired-state FILE" in capsys.readouterr().out
    assert main(["agent"]) == 2  # like typer's no_args_is_help: help, then exit 2
    assert "enroll" in capsys.readouterr().out


def test_a_group_imports_only_its_own_dependencies() -> None:
    """`ztb agent` on a router loads neither the broker's web stack nor typer and click."""
    probe = (
        "import sys; from ztb.cli import main; "
        "main(['agent', '--help']); "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'broker', 'typer', 'click') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
