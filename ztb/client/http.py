"""The people's HTTP client for the broker API (docs/api.md), used by the ``ztb`` commands.

It depends on httpx alone, so the technician's bare ``pip install ztb`` can run it, and it
never imports the broker. Every failure surfaces as :class:`ClientError` with one readable
line: the broker's ``detail`` for 4xx/5xx answers (:class:`StatusError`), or what went
wrong on the way (unreachable, TLS, not JSON). The home agent talks to the broker through
its own client (``agent.broker_link.cert_client``: mTLS against a pinned CA), not this one.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx  # without its own command-line client: see ztb/client/__init__.py

from ztb.exit_codes import ExitCode, for_http_status

Json = dict[str, Any]

# Tests point every client at an in-process broker by setting this; None = real network.
default_transport: httpx.BaseTransport | None = None

DEFAULT_TIMEOUT_S = 30.0


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object; ``ValueError`` saying what came instead (for both clients)."""
    try:
        data = response.json()
    except ValueError:
        raise ValueError("non-JSON") from None
    if not isinstance(data, dict):
        raise ValueError("a non-object")
    return data


class ClientError(Exception):
    """A call to the broker failed; the message is one line meant for a person.

    ``exit_code`` is what ``ztb`` exits with (docs/cli.md), so scripts can tell an
    unreachable broker from a refusal without reading the message.
    """

    exit_code: int = ExitCode.FAILURE


class SettingError(ClientError):
    """The broker URL or CA file given to the client cannot work."""

    exit_code = ExitCode.USAGE


class Unreachable(ClientError):
    """No connection to the broker (refused, unresolvable, TLS not trusted)."""

    exit_code = ExitCode.UNREACHABLE


class TimedOut(ClientError):
    """The broker did not answer within the client's timeout."""

    exit_code = ExitCode.TIMEOUT


class StatusError(ClientError):
    """The broker answered with an error status; ``detail`` is its own explanation."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail
        self.exit_code = for_http_status(status)


def _segment(value: str) -> str:
    """Quote an id or name for use as one path segment (names may hold any character)."""
    return quote(value, safe="")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _detail_of(response: httpx.Response) -> str:
    """The broker's ``detail`` as one sentence, also for FastAPI's list-shaped 422s."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg")
    if isinstance(detail, str) and detail.strip():
        return _one_line(detail)
    return f"broker answered {response.status_code} {response.reason_phrase}".rstrip()


def _tls_context(ca_cert: Path | None) -> ssl.SSLContext:
    """Trust ``ca_cert`` when given, else the system trust store (not a bundled one)."""
    if ca_cert is None:
        return ssl.create_default_context()
    if not ca_cert.is_file():
        raise SettingError(f"CA certificate file not found: {ca_cert}")
    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except ssl.SSLError as exc:
        raise SettingError(f"cannot load CA certificate {ca_cert}: {exc}") from None


class ZtbClient:
    """One broker, one identity. Methods mirror docs/api.md and return its JSON objects."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        ca_cert: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise SettingError(f"broker URL must start with https:// or http://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = transport or default_transport
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            verify=True if transport is not None else _tls_context(ca_cert),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ZtbClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.ConnectError as exc:
            hint = " (check --ca-cert / ZTB_CA_CERT)" if "CERTIFICATE" in str(exc) else ""
            raise Unreachable(
                f"cannot reach the broker at {self.base_url}: {_one_line(str(exc))}{hint}"
            ) from None
        except httpx.TimeoutException:
            raise TimedOut(f"the broker at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"talking to the broker failed: {_one_line(str(exc))}") from None
        if response.is_error:
            if stream:
                response.read()
                response.close()
            raise StatusError(response.status_code, _detail_of(response))
        return response

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        return self._send(self._http.build_request(method, path, json=body, params=params))

    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: dict[str, str] | None = None,
    ) -> Json:
        response = self._call(method, path, body=body, params=params)
        try:
            return json_object(response)
        except ValueError as exc:
            raise ClientError(f"broker sent {exc} for {method} {path}") from None

    def _items(self, path: str, key: str, params: dict[str, str] | None = None) -> list[Json]:
        items = self._json("GET", path, params=params).get(key, [])
        return [item for item in items if isinstance(item, dict)]

    # -- identity --------------------------------------------------------------------------

    def me(self) -> Json:
        return self._json("GET", "/v1/me")

    def login(self, email: str, password: str, totp: str | None = None) -> Json:
        body: Json = {"email": email, "password": password}
        if totp:
            body["totp"] = totp
        return self._json("POST", "/v1/auth/login", body=body)

    def create_user(self, email: str, role: str, password: str | None = None) -> Json:
        body: Json = {"email": email, "role": role}
        if password is not None:
            body["password"] = password
        return self._json("POST", "/v1/users", body=body)

    def list_users(self) -> list[Json]:
        return self._items("/v1/users", "users")

    def create_token(self, user_id: str, name: str | None, ttl_s: int | None) -> Json:
        body: Json = {k: v for k, v in (("name", name), ("ttl_s", ttl_s)) if v is not None}
        return self._json("POST", f"/v1/users/{_segment(user_id)}/tokens", body=body)

    def list_tokens(self) -> list[Json]:
        return self._items("/v1/tokens", "tokens")

    def revoke_token(self, token_id: str) -> None:
        self._call("DELETE", f"/v1/tokens/{_segment(token_id)}")

    def begin_totp(self) -> Json:
        return self._json("POST", "/v1/me/totp")

    def confirm_totp(self, code: str) -> None:
        self._call("POST", "/v1/me/totp/confirm", body={"code": code})

    # -- homes and devices -----------------------------------------------------------------

    def create_home(self, fields: Json) -> Json:
        return self._json("POST", "/v1/homes", body=fields)

    def list_homes(self) -> list[Json]:
        return self._items("/v1/homes", "homes")

    def get_home(self, home: str) -> Json:
        return self._json("GET", f"/v1/homes/{_segment(home)}")

    def update_home(self, home: str, fields: Json) -> Json:
        return self._json("PATCH", f"/v1/homes/{_segment(home)}", body=fields)

    def set_policy(self, home: str, policy: Json) -> Json:
        return self._json("PUT", f"/v1/homes/{_segment(home)}/policy", body=policy)

    def create_enroll_token(self, home: str, ttl_s: int | None) -> Json:
        body: Json = {} if ttl_s is None else {"ttl_s": ttl_s}
        return self._json("POST", f"/v1/homes/{_segment(home)}/enroll-token", body=body)

    def revoke_agent(self, home: str, agent_id: str) -> Json:
        path = f"/v1/homes/{_segment(home)}/agents/{_segment(agent_id)}/revoke"
        return self._json("POST", path, body={})

    def add_device(self, home: str, name: str, ip: str, mac: str | None) -> Json:
        body: Json = {"name": name, "ip": ip}
        if mac:
            body["mac"] = mac
        return self._json("POST", f"/v1/homes/{_segment(home)}/devices", body=body)

    def list_devices(self, home: str) -> list[Json]:
        return self._items(f"/v1/homes/{_segment(home)}/devices", "devices")

    def remove_device(self, home: str, device: str) -> None:
        self._call("DELETE", f"/v1/homes/{_segment(home)}/devices/{_segment(device)}")

    # -- sessions --------------------------------------------------------------------------

    def request_session(
        self,
        home: str,
        grants: list[str],
        duration_s: int,
        reason: str,
        public_key: str | None,
    ) -> Json:
        body: Json = {"home": home, "grants": grants, "duration_s": duration_s, "reason": reason}
        if public_key is not None:
            body["public_key"] = public_key
        return self._json("POST", "/v1/sessions", body=body)

    def list_sessions(self, home: str | None = None, state: str | None = None) -> list[Json]:
        params = {k: v for k, v in (("home", home), ("state", state)) if v}
        return self._items("/v1/sessions", "sessions", params=params)

    def get_session(self, session_id: str) -> Json:
        return self._json("GET", f"/v1/sessions/{_segment(session_id)}")

    def _session_action(self, session_id: str, action: str, body: Json | None = None) -> Json:
        return self._json("POST", f"/v1/sessions/{_segment(session_id)}/{action}", body=body)

    def approve_session(
        self, session_id: str, duration_s: int | None = None, totp: str | None = None
    ) -> Json:
        body: Json = {k: v for k, v in (("duration_s", duration_s), ("totp", totp)) if v}
        return self._session_action(session_id, "approve", body)

    def deny_session(self, session_id: str, reason: str | None = None) -> Json:
        return self._session_action(session_id, "deny", {"reason": reason} if reason else {})

    def revoke_session(self, session_id: str, reason: str | None = None) -> Json:
        return self._session_action(session_id, "revoke", {"reason": reason} if reason else {})

    def cancel_session(self, session_id: str) -> Json:
        return self._session_action(session_id, "cancel")

    def add_grants(self, session_id: str, grants: list[str]) -> Json:
        return self._session_action(session_id, "grants", {"grants": grants})

    def wg_quick(self, session_id: str) -> str:
        return self._call("GET", f"/v1/sessions/{_segment(session_id)}/wg-quick").text

    def session_report(self, session_id: str) -> Json:
        return self._json("GET", f"/v1/sessions/{_segment(session_id)}/report")

    # -- audit -----------------------------------------------------------------------------

    def verify_audit(
        self, public_key: str | None = None, against: list[Json] | None = None
    ) -> Json:
        """Verify the chain; against ``public_key`` (pinned) and witnesses' saved digests."""
        if public_key is None and not against:
            return self._json("GET", "/v1/audit/verify")
        return self._json(
            "POST", "/v1/audit/verify", body={"public_key": public_key, "against": against or []}
        )

    def export_audit(self) -> Iterator[str]:
        """The chain as JSON lines, streamed so a long history never sits in memory."""
        response = self._send(self._http.build_request("GET", "/v1/audit/export"), stream=True)
        try:
            yield from (line for line in response.iter_lines() if line.strip())
        except httpx.HTTPError as exc:
            raise ClientError(f"audit export broke off: {_one_line(str(exc))}") from None
        finally:
            response.close()
