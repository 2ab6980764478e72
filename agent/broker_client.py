"""The agent's HTTPS client: the pinned broker CA only, the agent certificate for mTLS.

All agent ↔ broker HTTP lives here; ``agent.enroll`` does the cryptography around it.
Tests pass an ``httpx`` transport (``MockTransport`` or ``ASGITransport`` with the real
broker app), the lab and routers use real TLS. No ``cryptography`` import: the run loop
stays light.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from agent.state_dir import StateDir
from netpolicy import DesiredState

MAX_WAIT_S = 60
# The long-poll may hold the request for ``wait`` seconds; allow this much on top.
_POLL_SLACK_S = 10.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


class BrokerError(RuntimeError):
    """The broker answered with an error or could not be reached; message is user-facing."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PinMismatch(BrokerError):
    """The broker showed a CA other than the one the enrollment token pins."""


class CertificateRejected(BrokerError):
    """The broker refused the agent's certificate (401/403): renew, or enroll again."""


def pinned_ssl_context(ca_pem: str, client_pem: Path | None = None) -> ssl.SSLContext:
    """Trust exactly the pinned broker CA (no system store); optionally present our cert."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_pem is not None:
        context.load_cert_chain(client_pem)
    return context


def backoff_delay(
    attempt: int,
    rand: Callable[[], float] = random.random,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): exponential, equal jitter.

    Half the window is fixed so an agent never spins; the other half is random so a
    thousand agents cut off by one broker restart do not come back in the same second.
    """
    window = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 32))
    return window / 2 + window / 2 * rand()


def fetch_pinned_ca(
    broker_url: str, fingerprint: str, transport: httpx.BaseTransport | None = None
) -> str:
    """``GET /v1/agent/ca`` and accept it only if its SHA-256 is the pinned ``fingerprint``.

    This one request cannot verify the server (we do not trust any CA yet); the pin makes
    that safe: a man in the middle can only serve a CA that fails the comparison. Returns
    the CA as canonical PEM (exactly one certificate), to trust from then on.
    """
    with httpx.Client(
        base_url=broker_url.rstrip("/"),
        verify=False,  # noqa: S501 -- checked against the pinned fingerprint below
        transport=transport,
        timeout=10.0,
    ) as http:
        ca_pem = _json(_send(http, "GET", "/v1/agent/ca")).get("ca_pem")
    text = str(ca_pem).strip()
    if text.count("-----BEGIN") != 1:
        raise BrokerError("broker's /v1/agent/ca answer must hold exactly one PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(text)
    except ValueError:
        raise BrokerError("broker's /v1/agent/ca answer holds no PEM certificate") from None
    presented = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(presented, fingerprint.lower()):
        raise PinMismatch(
            f"broker CA fingerprint {presented} does not match the enrollment token's "
            f"{fingerprint.lower()}: wrong broker URL, or someone is in the middle"
        )
    return ssl.DER_cert_to_PEM_cert(der)


class BrokerClient:
    """One keep-alive HTTPS connection to the broker."""

    def __init__(
        self,
        broker_url: str,
        ssl_context: ssl.SSLContext,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._http = httpx.Client(
            base_url=broker_url.rstrip("/"),
            verify=ssl_context,
            transport=transport,
            timeout=timeout_s,
        )

    @classmethod
    def from_state_dir(
        cls, state: StateDir, transport: httpx.BaseTransport | None = None
    ) -> BrokerClient:
        """mTLS client of an enrolled agent (reads the files again: call after a renewal)."""
        config = state.read_config()
        context = pinned_ssl_context(state.read_ca_pem(), state.check_client_pem())
        return cls(config.broker_url, context, transport)

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def enroll(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/agent/enroll`` (the token in ``body`` is the credential)."""
        return _json(_send(self._http, "POST", "/v1/agent/enroll", json=dict(body)))

    def renew(self, csr_pem: str) -> str:
        """``POST /v1/agent/renew`` over mTLS → the new certificate PEM."""
        data = _json(_send(self._http, "POST", "/v1/agent/renew", json={"csr_pem": csr_pem}))
        certificate_pem = data.get("certificate_pem")
        if not isinstance(certificate_pem, str):
            raise BrokerError("broker's renew answer has no certificate_pem")
        return certificate_pem

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
        response = _send(
            self._http,
            "GET",
            "/v1/agent/state",
            params={"after": after, "wait": wait},
            timeout=wait + _POLL_SLACK_S,
        )
        arrived = clock()
        if response.status_code == 204:
            return None
        return DesiredState.from_dict(_json(response)), arrived

    def report(self, payload: Mapping[str, Any]) -> None:
        """``POST /v1/agent/report``: applied revision, peers, element counters, neighbours."""
        _send(self._http, "POST", "/v1/agent/report", json=dict(payload))


def _send(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise BrokerError(f"cannot reach the broker for {method} {path}: {exc}") from exc
    if response.is_success:
        return response
    detail = _detail(response)
    message = f"broker refused {method} {path} ({response.status_code}): {detail}"
    if response.status_code in (401, 403):
        raise CertificateRejected(message, response.status_code)
    raise BrokerError(message, response.status_code)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:200] or response.reason_phrase


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise BrokerError(f"broker sent non-JSON for {response.request.url.path}") from None
    if not isinstance(data, dict):
        raise BrokerError(f"broker sent a non-object for {response.request.url.path}")
    return data
