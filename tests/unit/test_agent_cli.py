"""``ztb agent``: clear one-line errors for bad input, and the log line format."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.events import format_event
from ztb.cli import main


def test_run_without_a_source_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", "--interface", "wgx"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--desired-state is required" in err[0]


def test_run_rejects_a_bad_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key"
    key.write_text("not-a-key\n")
    argv = ["agent", "run", "--desired-state", str(tmp_path / "d.json"), "--interface", "wgx"]
    argv += ["--listen-port", "51820", "--private-key-file", str(key)]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable WireGuard private key" in err[0]


def test_run_rejects_a_bad_backend_choice(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", "--wireguard", "magic"]) != 0
    assert "magic" in capsys.readouterr().err


def test_events_are_one_logfmt_line() -> None:
    line = format_event("bad_desired_state", {"error": 'bad "x"\nline two', "revision": 3})
    assert "\n" not in line
    assert line.split(" ", 1)[1] == (
        'event=bad_desired_state error="bad \\"x\\"\\nline two" revision=3'
    )
