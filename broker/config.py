"""Broker settings: one frozen object built by the CLI (or a test) and handed to the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .db.engine import sqlite_url

DEFAULT_MAX_TOKEN_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    db_url: str | None = None  # default: SQLite file inside data_dir
    max_body_bytes: int = 64 * 1024
    maintenance_interval_s: float = 5.0  # expiry job and audit checkpoints
    request_ttl_s: int = 24 * 3600  # an unanswered request expires after this
    api_token_ttl_s: int = 90 * 24 * 3600
    login_token_ttl_s: int = 12 * 3600
    # The longest life a token minted through the API may ask for (``serve --max-token-ttl``).
    max_token_ttl_s: int = DEFAULT_MAX_TOKEN_TTL_S
    # Failed sign-ins allowed per account and per client address (``limits`` notation)
    # before further attempts answer 429 until the window has moved on.
    sign_in_failures_per_account: str = "10/15 minutes"
    sign_in_failures_per_address: str = "15/15 minutes"
    longpoll_max_s: float = 60.0
    # Audit checkpoints: signed at least this often even with no new events (a heartbeat),
    # and ``verify`` wants the newest no older than the age, with at most so many events
    # after it: so removing the latest checkpoints cannot pass for "not signed yet".
    audit_heartbeat_s: float = 300.0
    audit_max_checkpoint_age_s: float = 900.0
    audit_max_unsigned_events: int = 10_000
    webhook_attempts: int = 4
    webhook_backoff_s: float = 0.5
    # Private networks (CIDR) webhooks may reach; by default only public addresses.
    webhook_allow: tuple[str, ...] = ()
    # Names (DNS or IP) agents dial: the broker's HTTPS certificate is issued for them.
    tls_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    agent_cert_lifetime_s: int = 24 * 3600
    # The key sealing secrets at rest (``broker.secret_key``); default DATA_DIR/secrets.key.
    secret_key_file: Path | None = None

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir)

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "audit-signing.key"
