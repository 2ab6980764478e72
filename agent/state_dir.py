"""The agent's state directory: everything enrollment leaves behind for ``ztb agent run``.

Layout (directory mode 0700)::

    config.json   broker URL, home id, agent id, interface, listen port, endpoint
    ca.pem        the broker CA, pinned at enrollment (the only CA the agent trusts)
    wg.key        WireGuard private key, base64 (0600)
    client.pem    client certificate followed by its private key (0600)
    client.json   serial and validity of client.pem, so the run loop can plan renewal
                  without importing ``cryptography``

Certificate and key share one file so a renewal replaces both in one atomic rename: a
crash can never leave a key next to a certificate for another key. ``config.json`` is
written last at enrollment, so its presence means "enrolled". Standard library only.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ztb.files import write_atomic

CONFIG_FILE = "config.json"
CA_FILE = "ca.pem"
WG_KEY_FILE = "wg.key"
CLIENT_PEM_FILE = "client.pem"
CLIENT_META_FILE = "client.json"

_INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.=+-]{1,15}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StateError(ValueError):
    """A state directory that is missing, incomplete or unsafe; message is user-facing."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    broker_url: str
    home_id: str
    agent_id: str
    interface: str
    listen_port: int
    endpoint: str

    def __post_init__(self) -> None:
        url = urlsplit(self.broker_url)
        if url.scheme != "https" or not url.hostname:
            raise StateError(f"broker URL {self.broker_url!r} must be https://HOST[:PORT]")
        for what, value in (("home id", self.home_id), ("agent id", self.agent_id)):
            if not _ID_RE.match(value):
                raise StateError(f"{what} {value!r} must be 1-64 letters, digits, '_' or '-'")
        if not _INTERFACE_RE.match(self.interface):
            raise StateError(f"interface name {self.interface!r} must be 1-15 characters")
        if isinstance(self.listen_port, bool) or not 1 <= self.listen_port <= 65535:
            raise StateError(f"listen port {self.listen_port!r} must be 1-65535")
        host, sep, port = self.endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise StateError(f"endpoint {self.endpoint!r} must be HOST:PORT")

    @property
    def broker_base_url(self) -> str:
        return self.broker_url.rstrip("/")

    @classmethod
    def from_dict(cls, data: Any) -> AgentConfig:
        if not isinstance(data, dict):
            raise StateError(f"{CONFIG_FILE} must hold a JSON object")
        try:
            text = {name: str(data[name]) for name in ("broker_url", "home_id", "agent_id")}
            interface, endpoint = str(data["interface"]), str(data["endpoint"])
            listen_port = int(data["listen_port"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{CONFIG_FILE} is incomplete or malformed ({exc})") from None
        return cls(
            broker_url=text["broker_url"],
            home_id=text["home_id"],
            agent_id=text["agent_id"],
            interface=interface,
            listen_port=listen_port,
            endpoint=endpoint,
        )


@dataclass(frozen=True, slots=True)
class CertificateValidity:
    """When the client certificate is valid; renewal is due at two thirds of its lifetime."""

    serial: str
    not_before: datetime
    not_after: datetime

    @property
    def renew_at(self) -> datetime:
        return self.not_before + (self.not_after - self.not_before) * 2 / 3

    def to_dict(self) -> dict[str, str]:
        return {
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> CertificateValidity:
        try:
            validity = cls(
                serial=str(data["serial"]),
                not_before=datetime.fromisoformat(data["not_before"]),
                not_after=datetime.fromisoformat(data["not_after"]),
            )
        except (KeyError, TypeError, ValueError):
            raise StateError(f"{CLIENT_META_FILE} is incomplete or malformed") from None
        if validity.not_before.tzinfo is None or validity.not_after.tzinfo is None:
            raise StateError(f"{CLIENT_META_FILE} times must carry a time zone")
        return validity


class StateDir:
    """Paths and atomic reads/writes of one agent's state directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def ca_path(self) -> Path:
        return self.path / CA_FILE

    @property
    def wg_key_path(self) -> Path:
        return self.path / WG_KEY_FILE

    @property
    def client_pem_path(self) -> Path:
        return self.path / CLIENT_PEM_FILE

    @property
    def client_meta_path(self) -> Path:
        return self.path / CLIENT_META_FILE

    def is_enrolled(self) -> bool:
        return self.config_path.exists()

    def create(self) -> None:
        """Make the directory (0700); refuse one that already holds an enrollment."""
        if self.is_enrolled():
            raise StateError(
                f"{self.path} already holds an enrolled agent; use another --state-dir"
            )
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.chmod(0o700)

    def read_config(self) -> AgentConfig:
        if not self.is_enrolled():
            raise StateError(f"{self.path} holds no enrolled agent (run 'ztb agent enroll')")
        try:
            data = json.loads(self.config_path.read_text())
        except json.JSONDecodeError as exc:
            raise StateError(f"{self.config_path} is not valid JSON: {exc}") from None
        return AgentConfig.from_dict(data)

    def write_config(self, config: AgentConfig) -> None:
        write_atomic(self.config_path, _json(asdict(config)), 0o644)

    def read_ca_pem(self) -> str:
        return self._read(self.ca_path)

    def write_ca_pem(self, ca_pem: str) -> None:
        write_atomic(self.ca_path, ca_pem.encode("ascii"), 0o644)

    def read_wg_private_key(self) -> str:
        return self._read(self.wg_key_path, secret=True).strip()

    def write_wg_private_key(self, private_key: str) -> None:
        write_atomic(self.wg_key_path, f"{private_key}\n".encode("ascii"), 0o600)

    def read_validity(self) -> CertificateValidity:
        try:
            data = json.loads(self._read(self.client_meta_path))
        except json.JSONDecodeError:
            raise StateError(f"{self.client_meta_path} is not valid JSON") from None
        return CertificateValidity.from_dict(data)

    def write_client_identity(
        self, certificate_pem: str, private_key_pem: str, validity: CertificateValidity
    ) -> None:
        """Replace certificate+key in one rename, then the validity that plans renewal."""
        bundle = certificate_pem.rstrip("\n") + "\n" + private_key_pem.rstrip("\n") + "\n"
        write_atomic(self.client_pem_path, bundle.encode("ascii"), 0o600)
        write_atomic(self.client_meta_path, _json(validity.to_dict()), 0o644)

    def check_client_pem(self) -> Path:
        """The path for ``ssl.load_cert_chain``, after checking it exists and is private."""
        self._read(self.client_pem_path, secret=True)
        return self.client_pem_path

    def _read(self, path: Path, secret: bool = False) -> str:
        try:
            if secret and path.stat().st_mode & 0o077:
                raise StateError(f"{path} must not be readable by group or others (chmod 600)")
            return path.read_text()
        except FileNotFoundError:
            raise StateError(f"{path} is missing (re-enroll the agent)") from None


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
