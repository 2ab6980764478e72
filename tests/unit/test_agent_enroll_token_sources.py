"""``ztb agent enroll`` reads its one-time token from a file, the environment or stdin.

A token given as ``--token VALUE`` shows in ``ps`` to every user of the router while
enrollment runs (issue 10, item 10). These run the real command against a real broker
over HTTPS; each source enrolls a new agent.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.test_cli_story import Cli, LiveBroker, live_broker
from ztb.cli import main

__all__ = ["live_broker"]


@pytest.fixture
def mint_token(
    live_broker: LiveBroker, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[], str]:
    """A home on a live broker; each call mints one enrollment token for it."""
    monkeypatch.setenv("ZTB_BROKER", live_broker.url)
    monkeypatch.setenv("ZTB_CA_CERT", str(live_broker.ca_cert))
    monkeypatch.delenv("ZTB_ENROLL_TOKEN", raising=False)
    admin = Cli(capsys, live_broker.admin)
    admin.ok("user", "create", "ann@example.com", "--role", "homeowner")
    admin.ok("home", "create", "ann-house", "--owner", "ann@example.com", "--lan", "10.1.0.0/24")
    return lambda: admin.ok("home", "enroll-token", "ann-house", "--ttl", "5m").strip()


def enroll(broker_url: str, state_dir: Path, *token_args: str) -> list[str]:
    where = ["--state-dir", str(state_dir), "--interface", "ztb0", "--listen-port", "51820"]
    return ["agent", "enroll", "--broker", broker_url, *token_args, *where, "--endpoint", "x:1"]


def enrolled(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``argv`` (with ``--json``): the new agent's id."""
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    agent_id = json.loads(out)["agent_id"]
    assert isinstance(agent_id, str)
    return agent_id


def test_enroll_reads_the_token_from_a_file_the_environment_or_stdin(
    live_broker: LiveBroker,
    mint_token: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_broker.url
    token_file = tmp_path / "enroll-token"
    token_file.write_text(mint_token() + "\n")  # as `ztb home enroll-token > FILE` leaves it
    token_file.chmod(0o600)
    from_file = enrolled(capsys, enroll(url, tmp_path / "a", "--token-file", str(token_file)))

    monkeypatch.setenv("ZTB_ENROLL_TOKEN", mint_token())
    from_env = enrolled(capsys, enroll(url, tmp_path / "b"))

    # A flag wins over the environment (which now holds a spent token).
    monkeypatch.setattr(sys, "stdin", io.StringIO(mint_token() + "\n"))
    from_stdin = enrolled(capsys, enroll(url, tmp_path / "c", "--token", "-"))

    assert len({from_file, from_env, from_stdin}) == 3
    for state in ("a", "b", "c"):
        config = json.loads((tmp_path / state / "config.json").read_text())
        assert config["broker_url"] == url

    # --token VALUE still works (documented as visible in ps).
    enrolled(capsys, enroll(url, tmp_path / "d", "--token", mint_token()))


BROKER = "https://198.51.100.1:1"  # never reached: every case fails before the network


@pytest.mark.parametrize(
    ("token_args", "env", "stdin", "message"),
    [
        ((), None, "", "give the enrollment token with --token-file FILE, ZTB_ENROLL_TOKEN"),
        ((), "  \n", "", "the enrollment token from ZTB_ENROLL_TOKEN is empty"),
        (("--token", "-"), None, "\n", "the enrollment token from standard input is empty"),
        (("--token-file", "{tmp}/missing"), None, "", "cannot read it"),
        (("--token-file", "{tmp}/empty"), None, "", "the enrollment token from --token-file"),
        (("--token", "x", "--token-file", "{tmp}/empty"), None, "", "not allowed with"),
        (("--token-file", "{tmp}/empty"), "ztbenroll.x", "", "is empty"),  # no fallback
    ],
)
def test_token_source_errors_are_one_line(
    token_args: tuple[str, ...],
    env: str | None,
    stdin: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "empty").write_text("")
    if env is None:
        monkeypatch.delenv("ZTB_ENROLL_TOKEN", raising=False)
    else:
        monkeypatch.setenv("ZTB_ENROLL_TOKEN", env)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in token_args]
    assert main(enroll(BROKER, tmp_path / "s", *args)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "s").exists()
