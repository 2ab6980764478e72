"""Exit statuses tell failures apart (docs/cli.md), and ``--json`` errors are JSON on stderr."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from ztb.cli import main
from ztb.client import http as client_http
from ztb.exit_codes import ExitCode

CREDENTIALS = ["--broker", "http://broker.test", "--token", "t"]


def broker_answering(status: int, detail: str = "nope") -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(status, json={"detail": detail}))


def broker_raising(exc: Exception) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handle)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_numbers_are_the_documented_ones() -> None:
    """docs/cli.md and scripts depend on these values; they never change meaning."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "NOT_FOUND_OR_FORBIDDEN": 3,
        "CONFLICT": 4,
        "UNREACHABLE": 5,
        "TIMEOUT": 6,
        "INTERRUPTED": 130,
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ExitCode.USAGE),
        (422, ExitCode.USAGE),
        (401, ExitCode.NOT_FOUND_OR_FORBIDDEN),
        (403, ExitCode.NOT_FOUND_OR_FORBIDDEN),
        (404, ExitCode.NOT_FOUND_OR_FORBIDDEN),
        (409, ExitCode.CONFLICT),
        (504, ExitCode.TIMEOUT),
        (500, ExitCode.FAILURE),
    ],
)
def test_broker_answers_map_to_exit_codes(
    status: int,
    expected: ExitCode,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_http, "default_transport", broker_answering(status, "why not"))
    code, out, err = run(capsys, "session", "approve", "ses_x", *CREDENTIALS)
    assert code == expected
    assert out == ""
    assert err == f"ztb: error: why not (HTTP {status})\n"


def test_unreachable_broker_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = run(capsys, "session", "list", "--broker", url, "--token", "t")
    assert code == ExitCode.UNREACHABLE
    assert "cannot reach the broker" in err


def test_timeout_exits_6(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = broker_raising(httpx.ReadTimeout("timed out"))
    monkeypatch.setattr(client_http, "default_transport", slow)
    code, _, err = run(capsys, "home", "list", *CREDENTIALS)
    assert code == ExitCode.TIMEOUT
    assert "did not answer in time" in err


@pytest.mark.parametrize(
    "args",
    [
        ["session", "show"],  # missing argument
        ["session", "list", "--bogus"],  # unknown option
        ["session", "request", "--home", "h", "--grant", "tv", "--duration", "5m"],
        ["session", "list", "--token", "t"],  # no broker URL
        ["session", "list", "--broker", "broker.test", "--token", "t"],  # no scheme
        ["nope"],  # unknown group
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *args)
    assert code == ExitCode.USAGE
    assert out == "" and err.startswith("ztb: error: ") and err.count("\n") == 1


def test_json_error_is_one_object_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_http, "default_transport", broker_answering(409, "already ended"))
    code, out, err = run(capsys, "session", "revoke", "ses_x", "--json", *CREDENTIALS)
    assert code == ExitCode.CONFLICT
    assert out == ""
    assert err.count("\n") == 1
    assert json.loads(err) == {
        "error": "already ended (HTTP 409)",
        "exit_code": ExitCode.CONFLICT,
        "status": 409,
    }


def test_json_usage_error_is_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "session", "show", "--json")
    assert code == ExitCode.USAGE
    assert out == ""
    report = json.loads(err)
    assert report["exit_code"] == ExitCode.USAGE and "Missing argument" in report["error"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, f"ztb {version('ztb')}\n", "")
