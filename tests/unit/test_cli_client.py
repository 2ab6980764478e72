"""How the API client turns the broker's error answers into one readable line."""

from __future__ import annotations

import httpx
import pytest

from ztb.client import activation
from ztb.client import http as client_http
from ztb.client.http import ClientError, StatusError, ZtbClient


def answering(status: int, **response: object) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **response)  # type: ignore[arg-type]

    return httpx.MockTransport(handle)


def test_detail_becomes_the_message() -> None:
    transport = answering(404, json={"detail": "session not found"})
    with ZtbClient("http://b", "t", transport=transport) as client, pytest.raises(StatusError) as e:
        client.get_session("ses_x")
    assert str(e.value) == "session not found (HTTP 404)"
    assert e.value.status == 404


def test_fastapi_validation_list_is_flattened_to_one_line() -> None:
    detail = [{"loc": ["body", "duration_s"], "msg": "Input should be\na valid integer"}]
    transport = answering(422, json={"detail": detail})
    with ZtbClient("http://b", "t", transport=transport) as client, pytest.raises(StatusError) as e:
        client.request_session("h", ["tv:tcp/80"], 60, "r", None)
    assert str(e.value) == "duration_s: Input should be a valid integer (HTTP 422)"


def test_non_json_error_names_the_status() -> None:
    transport = answering(502, text="<html>bad gateway</html>")
    with ZtbClient("http://b", "t", transport=transport) as client, pytest.raises(StatusError) as e:
        client.list_homes()
    assert str(e.value) == "broker answered 502 Bad Gateway (HTTP 502)"


def test_requests_carry_the_token_and_quote_names() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"devices": [{"id": "dev_1"}, "junk"]})

    with ZtbClient("http://b/", "tok", transport=httpx.MockTransport(handle)) as client:
        assert client.list_devices("my home/2") == [{"id": "dev_1"}]
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert seen[0].url.raw_path == b"/v1/homes/my%20home%2F2/devices"


def test_module_hook_reaches_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_http, "default_transport", answering(200, json={"id": "usr_1"}))
    with ZtbClient("http://b", "t") as client:
        assert client.me() == {"id": "usr_1"}


def test_non_object_json_is_an_error() -> None:
    transport = answering(200, json=[1])
    with ZtbClient("http://b", "t", transport=transport) as client, pytest.raises(ClientError):
        client.me()


def test_url_scheme_is_checked() -> None:
    with pytest.raises(ClientError, match="must start with https://"):
        ZtbClient("broker.example:8443", "t")


def sessions_in_states(*states: str) -> tuple[httpx.MockTransport, list[str]]:
    """Answers GET /v1/sessions/ID with each state in turn (the last one repeats)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        state = states[min(len(seen), len(states) - 1)]
        seen.append(state)
        return httpx.Response(200, json={"id": "ses_x", "state": state})

    return httpx.MockTransport(handle), seen


@pytest.mark.parametrize(
    ("states", "polls"),
    [(("approved", "approved", "active"), 3), (("active",), 1), (("ended",), 1)],
)
def test_config_waits_until_the_router_applied_the_session(
    states: tuple[str, ...], polls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activation, "ACTIVE_POLL_S", 0.001)
    transport, seen = sessions_in_states(*states)
    with ZtbClient("http://b", "t", transport=transport) as client:
        activation.wait_until_active(client, "ses_x", 5.0)
    assert len(seen) == polls


def test_config_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activation, "ACTIVE_POLL_S", 0.01)
    monkeypatch.setattr(activation, "ACTIVE_POLL_MAX_S", 0.01)
    transport, seen = sessions_in_states("approved")
    with ZtbClient("http://b", "t", transport=transport) as client:
        activation.wait_until_active(client, "ses_x", 0.1)
    assert 2 <= len(seen) <= 20
