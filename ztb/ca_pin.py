"""Accept a CA certificate fetched over an unverified connection only if it matches a pin.

Shared by the agent's enrollment (the pin comes in the enrollment token) and
``ztb ca fetch`` (the operator hands it out): the first request cannot verify the server,
so the SHA-256 of the certificate is what makes it safe. Standard library only; each
caller words its own errors from these exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl


class PinError(ValueError):
    """The answer is not one CA certificate with the pinned fingerprint."""


class NotOneCertificate(PinError):
    pass


class FingerprintMismatch(PinError):
    def __init__(self, presented: str, pinned: str) -> None:
        super().__init__(f"fingerprint {presented} is not the pinned {pinned}")
        self.presented = presented
        self.pinned = pinned


def pinned_ca_pem(text: str, fingerprint: str) -> str:
    """``text`` as canonical PEM if it holds exactly one certificate whose SHA-256 (64 hex
    digits, any case) is ``fingerprint``."""
    text = text.strip()
    if text.count("-----BEGIN") != 1:
        raise NotOneCertificate("must hold exactly one PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(text)
    except ValueError:
        raise NotOneCertificate("holds no PEM certificate") from None
    presented, pinned = hashlib.sha256(der).hexdigest(), fingerprint.lower()
    if not hmac.compare_digest(presented, pinned):
        raise FingerprintMismatch(presented, pinned)
    return ssl.DER_cert_to_PEM_cert(der)
