"""Random identifiers and bearer secrets; only secrets' SHA-256 digests are ever stored."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str) -> str:
    """Short, URL- and shell-safe: ``ses_k3f9q2m1x0ab``."""
    return f"{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(12))}"


def new_secret(prefix: str) -> str:
    """256 bits of randomness, so a plain SHA-256 digest is a safe way to store it."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
