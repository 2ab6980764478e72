"""The enrollment-token format, read by the broker and the agent alike.

``ztbenroll.<sha256 of the broker CA certificate, 64 hex>.<secret, 43 base64url chars>``:
the agent takes the fingerprint from the token to pin the CA on first contact, as
``kubeadm join`` does. Minting and hashing stay in ``broker.enroll_token``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PolicyError

PREFIX = "ztbenroll"
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


class EnrollTokenError(PolicyError):
    """A token that is malformed, unknown, expired or already used; message is user-facing."""


@dataclass(frozen=True, slots=True)
class EnrollToken:
    ca_fingerprint: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.ca_fingerprint}.{self.secret}"

    def __repr__(self) -> str:  # never print the secret into logs
        return f"EnrollToken(ca_fingerprint={self.ca_fingerprint!r}, secret='(hidden)')"


def parse_enroll_token(token: str) -> EnrollToken:
    """Split a token into CA fingerprint and secret, or say what is wrong with it."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise EnrollTokenError(
            f"enrollment token must look like {PREFIX}.<fingerprint>.<secret>"
            " (copy it whole from 'ztb home enroll-token')"
        )
    if not FINGERPRINT_RE.match(parts[1]):
        raise EnrollTokenError(
            "enrollment token's CA fingerprint must be 64 lower-case hex characters"
        )
    if not _SECRET_RE.match(parts[2]):
        raise EnrollTokenError("enrollment token's secret is malformed (truncated copy?)")
    return EnrollToken(ca_fingerprint=parts[1], secret=parts[2])
