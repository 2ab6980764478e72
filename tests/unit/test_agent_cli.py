"""``ztb agent``: clear one-line errors for bad input, and the log line format."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.events import format_event
from ztb.cli import main


def test_run_without_a_source_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", "--interface", "wgx"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exactly one of --desired-state FILE or --state-dir DIR" in err[0]


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


def test_run_in_state_dir_mode_takes_the_interface_from_enrollment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agent", "run", "--state-dir", str(tmp_path), "--interface", "wgx"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "come from --state-dir" in err[0]
    assert main(["agent", "run", "--state-dir", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no enrolled agent" in err[0]
    both = ["agent", "run", "--state-dir", str(tmp_path), "--desired-state", "d.json"]
    assert main(both) != 0
    assert "exactly one of" in capsys.readouterr().err


def test_enroll_refuses_a_malformed_token_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agent", "enroll", "--broker", "https://198.51.100.1", "--token", "nope"]
    argv += ["--state-dir", str(tmp_path / "s"), "--interface", "wg0", "--listen-port", "51820"]
    argv += ["--endpoint", "203.0.113.1:51820", "--json"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "enrollment token must look like" in err[0]
    assert not (tmp_path / "s").exists()
