"""One-time enrollment tokens that also pin the broker CA, as ``kubeadm join`` tokens do.

Format: ``ztbenroll.<sha256 of the CA certificate, 64 hex>.<secret, 43 base64url chars>``.
The agent takes the fingerprint from the token to check the CA it fetches over an
unauthenticated connection; the broker keeps only ``token_hash`` (SHA-256 of the whole
token: the secret has 256 bits of entropy, so a slow KDF adds nothing) plus expiry and
used-at columns. Pure: the clock comes in as ``now``. The format itself lives in
``netpolicy.enroll_format``, shared with the agent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from netpolicy.enroll_format import (
    FINGERPRINT_RE,
    EnrollToken,
    EnrollTokenError,
    parse_enroll_token,
)

__all__ = ["EnrollToken", "EnrollTokenError", "MintedToken", "mint", "token_hash", "verify"]

DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=7)
_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    token_hash: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"MintedToken(token='(hidden)', token_hash={self.token_hash!r})"


def mint(ca_fingerprint: str, now: datetime, ttl: timedelta = DEFAULT_TTL) -> MintedToken:
    """A fresh token for the CA with ``ca_fingerprint``; store only ``token_hash``."""
    fingerprint = ca_fingerprint.lower()
    if not FINGERPRINT_RE.match(fingerprint):
        raise EnrollTokenError("CA fingerprint must be 64 hex characters (SHA-256)")
    if not timedelta(0) < ttl <= MAX_TTL:
        raise EnrollTokenError(f"enrollment token lifetime must be >0 and <= {MAX_TTL}")
    token = str(EnrollToken(fingerprint, secrets.token_urlsafe(_SECRET_BYTES)))
    return MintedToken(token=token, token_hash=token_hash(token), expires_at=now + ttl)


def token_hash(token: str) -> str:
    """What the broker stores and looks tokens up by (hex SHA-256 of the canonical token)."""
    return hashlib.sha256(str(parse_enroll_token(token)).encode("ascii")).hexdigest()


def verify(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    try:
        presented = token_hash(token)
    except EnrollTokenError:
        return False
    return hmac.compare_digest(presented.encode("ascii"), stored_hash.lower().encode("ascii"))


def check_redeemable(expires_at: datetime, used_at: datetime | None, now: datetime) -> None:
    """Raise unless a stored token may be redeemed now (one-time, not expired)."""
    if used_at is not None:
        raise EnrollTokenError("enrollment token was already used; create a new one")
    if now >= expires_at:
        raise EnrollTokenError("enrollment token has expired; create a new one")
