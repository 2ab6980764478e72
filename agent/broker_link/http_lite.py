"""The daemon's two broker calls (long-poll, report) on the standard library.

``ztb agent run`` only ever asks ``GET /v1/agent/state`` and ``POST /v1/agent/report``;
doing that with ``http.client`` over the pinned mTLS context keeps httpx and its
dependencies (about 8 MB of RSS) out of the router daemon. Enrollment and renewal run in
short-lived processes and use ``agent.broker_link.cert_client`` (httpx).

The cut between client and network is ``Transport.request``: tests pass a fake, the
daemon a ``KeepAliveTransport`` over ``http.client.HTTPSConnection``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from agent.state_dir import StateDir
from netpolicy import AgentReport, DesiredState

MAX_WAIT_S = 60
# The long-poll may hold the request for ``wait`` seconds; allow this much on top.
POLL_SLACK_S = 10.0
# A desired state for thousands of grants is a few MB; anything larger is not a broker.
MAX_BODY = 16 * 1024 * 1024
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class BrokerLinkError(RuntimeError):
    """The broker answered with an error or could not be reached; message is user-facing."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CertificateRejected(BrokerLinkError):
    """The broker refused the agent's certificate (401/403): renew, or enroll again."""


def pinned_ssl_context(ca_pem: str, client_pem: Path | None = None) -> ssl.SSLContext:
    """Trust exactly the pinned broker CA (no system store); optionally present our cert."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_pem is not None:
        context.load_cert_chain(client_pem)
    return context


class Reply(NamedTuple):
    status: int
    reason: str
    body: bytes


class Transport(Protocol):
    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> Reply:
        """One exchange; raises ``OSError``/``http.client.HTTPException`` if it failed."""

    def close(self) -> None: ...


class KeepAliveTransport:
    """Idle connections are reused; one connection per concurrent request.

    The long-poll holds one connection while a report takes another. The broker may
    close an idle connection at any time (uvicorn does after 5 s), so a request that fails
    on a reused connection is tried once more on a fresh one; a timeout is not retried.
    """

    def __init__(
        self, connect: Callable[[], http.client.HTTPConnection], max_body: int = MAX_BODY
    ) -> None:
        self._connect = connect
        self._max_body = max_body
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> Reply:
        with self._lock:
            reused = self._idle.pop() if self._idle else None
        if reused is not None:
            try:
                return self._exchange(reused, method, path, body, timeout)
            except TimeoutError:
                raise
            except _NETWORK_ERRORS:
                pass  # closed by the broker while idle
        return self._exchange(self._connect(), method, path, body, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for connection in idle:
            connection.close()

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: bytes | None,
        timeout: float,
    ) -> Reply:
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read(self._max_body + 1)
        except BaseException:
            connection.close()
            raise
        keep = len(data) <= self._max_body and not response.will_close
        with self._lock:
            keep = keep and not self._closed
            if keep:
                self._idle.append(connection)
        if not keep:
            connection.close()
        if len(data) > self._max_body:
            raise BrokerLinkError(
                f"broker's answer to {method} {path} exceeds {self._max_body} bytes"
            )
        return Reply(response.status, response.reason, data)


class BrokerLink:
    """The broker as the run loop sees it: the desired-state long-poll and reports."""

    def __init__(self, transport: Transport, prefix: str = "", timeout_s: float = 10.0) -> None:
        self._transport = transport
        self._prefix = prefix.rstrip("/")
        self._timeout_s = timeout_s

    @classmethod
    def over_https(cls, broker_url: str, context: ssl.SSLContext) -> BrokerLink:
        url = urlsplit(broker_url)
        host, port = url.hostname or "", url.port

        def connect() -> http.client.HTTPConnection:
            return http.client.HTTPSConnection(host, port, context=context)

        return cls(KeepAliveTransport(connect), url.path)

    @classmethod
    def from_state_dir(cls, state: StateDir) -> BrokerLink:
        """mTLS client of an enrolled agent (reads the files again: call after a renewal)."""
        config = state.read_config()
        context = pinned_ssl_context(state.read_ca_pem(), state.check_client_pem())
        return cls.over_https(config.broker_url, context)

    def __enter__(self) -> BrokerLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def fetch_state(self, after: int, wait: int) -> DesiredState | None:
        """Long-poll: the desired state if the revision moved past ``after``, else None."""
        answer = self.fetch_state_timed(after, wait, time.monotonic)
        return None if answer is None else answer[0]

    def fetch_state_timed(
        self, after: int, wait: int, clock: Callable[[], float]
    ) -> tuple[DesiredState, float] | None:
        """``fetch_state``, with the ``clock()`` reading taken when the answer arrived.

        Lifetimes (``expires_in``) count from that moment: reading the clock after
        parsing a large document would stretch every lifetime by the parse time.
        """
        wait = min(max(wait, 0), MAX_WAIT_S)
        path = f"/v1/agent/state?after={int(after)}&wait={wait}"
        reply = self._send("GET", path, None, wait + POLL_SLACK_S)
        arrived = clock()
        if reply.status == 204:
            return None
        return DesiredState.from_dict(_json_object(reply, "/v1/agent/state")), arrived

    def report(self, report: AgentReport) -> None:
        """``POST /v1/agent/report``: applied revision, peers' handshakes, element counters."""
        self._send("POST", "/v1/agent/report", report.to_json().encode(), self._timeout_s)

    def _send(self, method: str, path: str, body: bytes | None, timeout: float) -> Reply:
        endpoint = f"{method} {path.partition('?')[0]}"
        try:
            reply = self._transport.request(method, self._prefix + path, body, timeout)
        except _NETWORK_ERRORS as exc:
            why = str(exc) or type(exc).__name__
            raise BrokerLinkError(f"cannot reach the broker for {endpoint}: {why}") from exc
        if 200 <= reply.status < 300:
            return reply
        message = f"broker refused {endpoint} ({reply.status}): {_detail(reply)}"
        if reply.status in (401, 403):
            raise CertificateRejected(message, reply.status)
        raise BrokerLinkError(message, reply.status)


def _detail(reply: Reply) -> str:
    try:
        detail = json.loads(reply.body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail:
        return str(detail)
    return reply.body[:200].decode("utf-8", "replace") or reply.reason


def _json_object(reply: Reply, path: str) -> dict[str, Any]:
    try:
        data = json.loads(reply.body)
    except ValueError:
        raise BrokerLinkError(f"broker sent non-JSON for {path}") from None
    if not isinstance(data, dict):
        raise BrokerLinkError(f"broker sent a non-object for {path}")
    return data
