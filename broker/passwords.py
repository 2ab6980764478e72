"""Password hashes: scrypt with a per-password salt, checked in constant work."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${key}".format(
        **_SCRYPT, salt=base64.b64encode(salt).decode(), key=base64.b64encode(key).decode()
    )


_DUMMY_HASH = hash_password(os.urandom(16).hex())


def check_password(password: str, stored: str | None) -> bool:
    """Constant work whether or not the user has a password, so timing reveals nothing."""
    scheme, n, r, p, salt, key = (stored or _DUMMY_HASH).split("$")
    if scheme != "scrypt":
        return False
    derived = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return stored is not None and hmac.compare_digest(derived, base64.b64decode(key))
