"""The technician's WireGuard private keys, kept on the technician's machine.

``ztb session request`` makes the key pair locally and sends only the public key; the
private key waits in ``~/.config/ztb/keys/ID.key`` (mode 0600) until ``ztb session config``
puts it into the wg-quick file in place of the broker's placeholder line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ztb.client.profile import config_dir

PRIVATE_KEY_PLACEHOLDER = "PrivateKey = <your private key>"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def keys_dir() -> Path:
    """``keys/`` in the config directory (``ztb.client.profile.config_dir``)."""
    return config_dir() / "keys"


def key_path(session_id: str) -> Path:
    if not _SAFE_ID.match(session_id):
        raise ValueError(f"unexpected session id {session_id!r}")
    return keys_dir() / f"{session_id}.key"


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, also when ``path`` already existed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def fill_private_key(config: str, session_id: str, key_origin: object = None) -> str:
    """Put the locally kept private key into the broker's placeholder line, if it has one.

    Without the key there is no usable config (nor QR code), so the error says where the
    key is: on the machine that requested the session, or nowhere for a broker-made key
    whose one reveal has been used.
    """
    lines = config.splitlines(keepends=True)
    spots = [i for i, line in enumerate(lines) if line.strip() == PRIVATE_KEY_PLACEHOLDER]
    if not spots:
        return config
    path = key_path(session_id)
    try:
        private_key = path.read_text().strip()
    except FileNotFoundError:
        if key_origin == "broker":
            raise KeyNotHere(
                f"the private key of {session_id} was made by the broker and shown once, in "
                "the first config download; it is not on this machine and the broker keeps "
                "no copy (request a new session)"
            ) from None
        raise KeyNotHere(
            f"the private key of {session_id} is not on this machine (looked for {path}); "
            "fetch the config where the session was requested"
        ) from None
    for i in spots:
        lines[i] = f"PrivateKey = {private_key}\n"
    return "".join(lines)


class KeyNotHere(RuntimeError):
    """The config needs a private key that this machine does not hold."""
