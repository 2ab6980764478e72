"""Fetch the broker's CA certificate and trust it only if it matches a fingerprint.

The first request cannot verify the server (no CA is trusted yet); the pin makes that
safe (``ztb.ca_pin``, as for the agent's enrollment): someone in the middle can only serve
a CA whose SHA-256 differs. The operator reads the fingerprint off the broker, e.g.
``openssl x509 -noout -fingerprint -sha256 -in DATA_DIR/ca.pem``, and hands it out with
the broker URL.
"""

from __future__ import annotations

import re

import httpx

from ztb.ca_pin import FingerprintMismatch, PinError, pinned_ca_pem
from ztb.client import http as client_http
from ztb.client.http import ClientError, SettingError, StatusError, TimedOut, Unreachable
from ztb.exit_codes import ExitCode

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class PinMismatch(ClientError):
    """The broker presented a CA other than the pinned one."""

    exit_code = ExitCode.FAILURE


def parse_fingerprint(text: str) -> str:
    """64 lower-case hex digits from ``SHA256:AB:CD:...``, ``ab cd ...`` or plain hex."""
    digits = re.sub(r"^sha-?256[:=]?|[\s:]", "", text.strip().lower())
    if not _HEX64.match(digits):
        raise SettingError(
            f"fingerprint must be the CA's SHA-256 as 64 hex digits (SHA256:AB:CD:...), "
            f"not {text!r}"
        )
    return digits


def fetch_pinned_ca(broker_url: str, fingerprint: str) -> str:
    """The broker's CA as PEM, after checking its SHA-256 against ``fingerprint``."""
    pinned = parse_fingerprint(fingerprint)
    if not broker_url.startswith("https://"):
        raise SettingError(f"the broker URL must start with https://, not {broker_url!r}")
    try:
        with httpx.Client(
            base_url=broker_url.rstrip("/"),
            verify=False,  # noqa: S501 -- checked against the pinned fingerprint below
            transport=client_http.default_transport,
            timeout=client_http.DEFAULT_TIMEOUT_S,
        ) as http:
            response = http.get("/v1/agent/ca")
            response.raise_for_status()
            text = str(response.json().get("ca_pem", ""))
    except httpx.TimeoutException:
        raise TimedOut(f"the broker at {broker_url} did not answer in time") from None
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        raise StatusError(status, f"{broker_url} has no CA to give") from None
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach the broker at {broker_url}: {exc}") from None
    except (ValueError, AttributeError):
        raise ClientError(f"{broker_url} sent no JSON for its CA") from None
    try:
        return pinned_ca_pem(text, pinned)
    except FingerprintMismatch as exc:
        raise PinMismatch(
            f"the broker's CA has fingerprint {exc.presented}, not the pinned {pinned}: "
            "wrong broker URL, or someone is in the middle"
        ) from None
    except PinError as exc:
        raise ClientError(f"the CA {broker_url} sent {exc}") from None
