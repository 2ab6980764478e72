"""One profile per person: the broker, API token and CA that ``ztb login`` stored.

It lives in ``$ZTB_HOME`` (else ``$XDG_CONFIG_HOME/ztb``, else ``~/.config/ztb``) as
``profile.json``, mode 0600 in a 0700 directory, so switching people means logging in,
not juggling ``ZTB_TOKEN``. Flags and ``ZTB_*`` variables still win; the profile's token
and CA are used only for the profile's own broker.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ztb.files import write_atomic

PROFILE_FILE = "profile.json"
CA_FILE = "ca.pem"


def config_dir() -> Path:
    """``$ZTB_HOME``, else ``$XDG_CONFIG_HOME/ztb``, else ``~/.config/ztb``."""
    if home := os.environ.get("ZTB_HOME"):
        return Path(home)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "ztb"


def write_private(path: Path, text: str) -> None:
    """Atomically write ``text`` readable by the owner only, in an owner-only directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o600)


@dataclass(frozen=True, slots=True)
class Profile:
    broker: str
    token: str | None  # None after 'ztb ca fetch' until 'ztb login'
    ca_cert: str | None = None  # absolute path of the CA to trust; None = system store

    def for_broker(self, broker: str) -> bool:
        return broker.rstrip("/") == self.broker


def load() -> Profile | None:
    """The stored profile, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((config_dir() / PROFILE_FILE).read_text())
        return Profile(str(data["broker"]), data.get("token"), data.get("ca_cert"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(profile: Profile) -> Path:
    """Store ``profile`` (0600), replacing the one before."""
    path = config_dir() / PROFILE_FILE
    write_private(path, json.dumps(asdict(profile), indent=2) + "\n")
    return path
