"""HTTPS for enrollment and renewal: the pinned broker CA only, the agent certificate.

Used by ``ztb agent enroll`` and the ``agent.broker_link.renew_once`` child, short-lived processes
where httpx's weight does not matter; the daemon's long-poll and reports go through
``agent.broker_link.http_lite`` (standard library). Tests pass an ``httpx`` transport
(``MockTransport`` or ``ASGITransport`` with the real broker app), the lab uses real TLS.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from agent.broker_link.http_lite import BrokerLinkError, CertificateRejected, pinned_ssl_context
from agent.state_dir import StateDir
from ztb.ca_pin import FingerprintMismatch, PinError, pinned_ca_pem
from ztb.client.http import json_object

__all__ = [
    "BrokerLinkError",
    "CertificateClient",
    "CertificateRejected",
    "PinMismatch",
    "fetch_pinned_ca",
    "pinned_ssl_context",
]


class PinMismatch(BrokerLinkError):
    """The broker showed a CA other than the one the enrollment token pins."""


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
    try:
        return pinned_ca_pem(str(ca_pem), fingerprint)
    except FingerprintMismatch as exc:
        raise PinMismatch(
            f"broker CA fingerprint {exc.presented} does not match the enrollment token's "
            f"{exc.pinned}: wrong broker URL, or someone is in the middle"
        ) from None
    except PinError as exc:
        raise BrokerLinkError(f"broker's /v1/agent/ca answer {exc}") from None


class CertificateClient:
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
    ) -> CertificateClient:
        """mTLS client of an enrolled agent (reads the files again: call after a renewal)."""
        config = state.read_config()
        context = pinned_ssl_context(state.read_ca_pem(), state.check_client_pem())
        return cls(config.broker_url, context, transport)

    def __enter__(self) -> CertificateClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
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
            raise BrokerLinkError("broker's renew answer has no certificate_pem")
        return certificate_pem


def _send(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise BrokerLinkError(f"cannot reach the broker for {method} {path}: {exc}") from exc
    if response.is_success:
        return response
    detail = _detail(response)
    message = f"broker refused {method} {path} ({response.status_code}): {detail}"
    if response.status_code in (401, 403):
        raise CertificateRejected(message, response.status_code)
    raise BrokerLinkError(message, response.status_code)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:200] or response.reason_phrase


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        return json_object(response)
    except ValueError as exc:
        raise BrokerLinkError(f"broker sent {exc} for {response.request.url.path}") from None
