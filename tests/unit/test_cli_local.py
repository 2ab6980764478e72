"""Client commands that must fail or work before any broker is involved."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ztb import wgkeys
from ztb.cli import main
from ztb.client import keys
from ztb.client.commands.common import clock, table
from ztb.client.commands.session_text import describe


@pytest.fixture
def ztb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZTB_HOME", str(tmp_path / "ztb"))
    return tmp_path / "ztb"


def closed_port() -> int:
    """A local port with nothing listening: bind, note the number, close."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_failing(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run ``ztb ARGS``, expect a failure, and return its single stderr line."""
    code = main(args)
    out, err = capsys.readouterr()
    assert code != 0, out
    assert out == ""
    assert err.startswith("ztb: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


REQUEST = ["session", "request", "--home", "h", "--duration", "30m", "--reason", "fix"]


@pytest.mark.parametrize(
    ("grant", "problem"),
    [
        ("thermostat", "grant must look like DEVICE:tcp/PORT[-PORT]"),
        ("thermostat:icmp/1", "protocol must be tcp or udp"),
        ("thermostat:tcp/99999", "port must be an integer from 1 to 65535"),
        ("thermostat:tcp/90-80", "is reversed"),
    ],
)
def test_bad_grant_is_refused_before_any_network(
    capsys: pytest.CaptureFixture[str], ztb_home: Path, grant: str, problem: str
) -> None:
    # No broker exists at this URL: the error must come from the local check.
    args = [*REQUEST, "--grant", grant, "--broker", f"http://127.0.0.1:{closed_port()}"]
    assert problem in run_failing(capsys, [*args, "--token", "t"])
    assert not ztb_home.exists()  # no key was made for a request that never left


@pytest.mark.parametrize("duration", ["30x", "0", "9h", "-5m"])
def test_bad_duration_is_refused(capsys: pytest.CaptureFixture[str], duration: str) -> None:
    args = ["session", "request", "--home", "h", "--grant", "tv:tcp/80", "--reason", "r"]
    message = run_failing(
        capsys, [*args, "--duration", duration, "--broker", "http://x", "--token", "t"]
    )
    assert "duration" in message or "between" in message


def test_missing_broker_and_token_name_the_env_vars(capsys: pytest.CaptureFixture[str]) -> None:
    assert "ZTB_BROKER" in run_failing(capsys, ["session", "list", "--token", "t"])
    assert "ZTB_TOKEN" in run_failing(capsys, ["session", "list", "--broker", "http://x"])


def test_unreachable_broker_is_one_line(
    capsys: pytest.CaptureFixture[str], ztb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("ZTB_BROKER", url)
    monkeypatch.setenv("ZTB_TOKEN", "t")
    message = run_failing(capsys, [*REQUEST, "--grant", "tv:tcp/80"])
    assert f"cannot reach the broker at {url}" in message
    # The key made for the failed request is gone, not left behind as a stray secret.
    assert list((ztb_home / "keys").iterdir()) == []


def test_missing_ca_cert_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    args = ["session", "list", "--broker", "https://x", "--token", "t", "--ca-cert", str(missing)]
    assert str(missing) in run_failing(capsys, args)


@pytest.mark.tools("wg")
def test_key_pair_matches_wg_pubkey() -> None:
    private, public = wgkeys.key_pair()
    assert len(private) == 44 and len(public) == 44
    assert wgkeys.key_pair(private) == (private, public)
    derived = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True)
    assert derived.stdout.strip() == public


def test_key_files_are_owner_only(ztb_home: Path) -> None:
    path = keys.key_path("ses_abc")
    assert path == ztb_home / "keys" / "ses_abc.key"
    path.parent.mkdir(parents=True)
    path.write_text("old")
    path.chmod(0o644)
    keys.write_secret(path, "secret\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "secret\n"


def test_key_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert keys.keys_dir() == tmp_path / "ztb" / "keys"


def test_session_ids_cannot_escape_the_key_dir() -> None:
    with pytest.raises(ValueError, match="unexpected session id"):
        keys.key_path("../../etc/passwd")


def test_fill_private_key_replaces_only_the_placeholder(ztb_home: Path) -> None:
    config = "[Interface]\nPrivateKey = <your private key>\nAddress = 10.0.0.2/32\n"
    with pytest.raises(RuntimeError, match="not on this machine"):
        keys.fill_private_key(config, "ses_abc")
    keys.write_secret(keys.key_path("ses_abc"), "KEY=\n")
    filled = keys.fill_private_key(config, "ses_abc")
    assert filled == "[Interface]\nPrivateKey = KEY=\nAddress = 10.0.0.2/32\n"
    # A config that already holds a broker-made key is left alone.
    assert keys.fill_private_key(filled, "ses_other") == filled


def test_describe_reads_as_one_line() -> None:
    session = {
        "id": "ses_x",
        "state": "approved",
        "grants": [
            {"device": "thermostat", "device_ip": "192.168.1.20", "proto": "tcp", "ports": "443"}
        ],
        "expires_at": "2026-11-22T14:32:00+00:00",
    }
    assert describe(session).startswith(
        "session ses_x  approved  thermostat 192.168.1.20 tcp/443  expires "
    )
    assert "14:32 UTC" in describe(session)


def test_table_aligns_columns() -> None:
    assert table(("id", "name"), [("a", "thermostat"), ("bbbb", "tv")]) == (
        "ID    NAME\na     thermostat\nbbbb  tv"
    )


def test_clock_shows_date_only_when_not_today() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert clock("2026-11-22T14:32:05Z", now) == "14:32 UTC"
    assert clock("2026-11-23T01:00:00+00:00", now) == "2026-11-23 01:00 UTC"
    assert clock(None, now) == "-"


CLIENT_MODULES = ["users", "homes", "devices", "sessions", "audit"]
SERVER_ONLY = ["fastapi", "sqlalchemy", "pydantic", "starlette", "cryptography", "segno"]
NOT_OURS_TO_IMPORT = ["broker", "agent", "lab"]


def test_client_commands_import_no_server_or_crypto_packages() -> None:
    """The technician's bare install has typer and httpx only; lazy imports keep it so.

    The client lives in ``ztb.client`` and never reaches into the broker, the agent or
    the lab, so it keeps working where only ``ztb`` itself is installed.
    """
    imports = "; ".join(f"import ztb.client.commands.{m}" for m in CLIENT_MODULES)
    forbidden = {*SERVER_ONLY, *NOT_OURS_TO_IMPORT}
    check = (
        f"import sys; {imports}; from ztb.cli import main; main(['session', 'list', '--help']); "
        f"print(sorted(set(sys.modules) & {forbidden!r}))"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.tools("wg")
def test_key_pair_falls_back_to_the_wg_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare install has neither cryptography nor wireguard_tools, but has wg."""
    private, public = wgkeys.key_pair()
    blocked = (
        "cryptography.hazmat.primitives.asymmetric.x25519",
        "wireguard_tools",
        "wireguard_tools.wireguard_key",  # may already be imported by an earlier test
    )
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    assert wgkeys.key_pair(private) == (private, public)
    made_private, made_public = wgkeys.key_pair()
    assert made_private != private and len(made_public) == 44
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="--no-local-key"):
        wgkeys.key_pair()
