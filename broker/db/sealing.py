"""Secrets sealed at rest: AES-256-GCM with a key that never enters the database.

The broker must read a few secrets back (TOTP seeds to check codes, webhook secrets to
sign deliveries, live pre-shared keys for the agent, a broker-made private key until its
one reveal), so hashing them as tokens are is not an option. They are stored sealed
instead: ``v1.`` + URL-safe base64 of (12-byte nonce, ciphertext, tag). The column name is
the associated data, so a sealed value copied into another column does not open.

The box rides on the engine's dialect (``attach``): one instance per engine, so two
brokers in one process (tests) keep their own keys, and the ``Sealed`` column type finds
it without services knowing any of this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Dialect, Engine

KEY_BYTES = 32
PREFIX = "v1."
_NONCE_BYTES = 12
_ATTRIBUTE = "ztb_secret_box"


class SealError(RuntimeError):
    """A sealed value does not open with this key (wrong key, or the value was altered)."""


class SecretBox:
    """Seals and opens short strings under one 256-bit key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the secrets key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        # Names the key without revealing it: stored in the database to catch a wrong key
        # at start instead of at the first TOTP check.
        self.fingerprint = hmac.new(key, b"ztb secrets key id", hashlib.sha256).hexdigest()[:32]

    def seal(self, plaintext: str, purpose: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, purpose: str) -> str:
        if not is_sealed(stored):
            raise SealError(f"{purpose} holds a value that is not sealed")
        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX) :])
            nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return self._aead.decrypt(nonce, sealed, purpose.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SealError(
                f"{purpose} does not open with this secrets key (wrong key, or altered)"
            ) from exc


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def attach(engine: Engine, box: SecretBox) -> None:
    """Let this engine's ``Sealed`` columns use ``box``."""
    setattr(engine.dialect, _ATTRIBUTE, box)


def box_of(dialect: Dialect) -> SecretBox:
    box = getattr(dialect, _ATTRIBUTE, None)
    if box is None:
        raise SealError("no secrets key is attached to this database engine")
    assert isinstance(box, SecretBox)
    return box
