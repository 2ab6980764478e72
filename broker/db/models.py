"""The broker's tables. Plain portable SQL only: the same schema runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import Sealed, UtcDateTime

LIVE_STATES = ("approved", "active")
SESSION_STATES = ("requested", *LIVE_STATES, "ended")
END_REASONS = ("denied", "revoked", "expired", "cancelled")
ROLES = ("admin", "homeowner", "technician")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    totp_secret: Mapped[str | None] = mapped_column(Sealed("users.totp_secret"))
    totp_enabled: Mapped[bool] = mapped_column(default=False)
    # Last accepted TOTP time step: a code is good once (replays are refused).
    totp_last_step: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # The token that minted this one (None: made by sign-in, an admin or step-up). Revoking
    # a token revokes everything it minted, and a child never outlives its parent.
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)


class Home(Base):
    __tablename__ = "homes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    lan: Mapped[str] = mapped_column(String(64))
    router_ip: Mapped[str] = mapped_column(String(64))
    tunnel_pool: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint: Mapped[str | None] = mapped_column(String(255))
    agent_public_key: Mapped[str | None] = mapped_column(String(44))
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(Sealed("homes.webhook_secret"))
    require_totp_for_approval: Mapped[bool] = mapped_column(default=False)
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Bumped on every change the agent must apply; the long-poll compares against it.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("home_id", "name", name="uq_device_name"),
        UniqueConstraint("home_id", "ip", name="uq_device_ip"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    home_id: Mapped[str] = mapped_column(ForeignKey("homes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))


class HomeAgent(Base):
    """An enrolled agent of a home (its certificate, WireGuard key, standing); not the
    agent's reconciler (``agent.reconcile``)."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    home_id: Mapped[str] = mapped_column(ForeignKey("homes.id", ondelete="CASCADE"), index=True)
    wg_public_key: Mapped[str | None] = mapped_column(String(44))
    interface: Mapped[str | None] = mapped_column(String(15))
    listen_port: Mapped[int | None]
    endpoint: Mapped[str | None] = mapped_column(String(255))
    # The client certificate the agent authenticates with (lower-case hex serial). After a
    # renewal the previous one stays good until the new one is first seen, so an answer
    # lost in transit does not lock the agent out.
    cert_serial: Mapped[str | None] = mapped_column(String(64), unique=True)
    cert_not_after: Mapped[datetime | None]
    previous_cert_serial: Mapped[str | None] = mapped_column(String(64))
    applied_revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AgentCertificate(Base):
    """Inventory of every client certificate the CA issued: who, when, until when."""

    __tablename__ = "agent_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    home_id: Mapped[str] = mapped_column(ForeignKey("homes.id", ondelete="CASCADE"), index=True)
    issued_at: Mapped[datetime]
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    first_seen_at: Mapped[datetime | None]


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    home_id: Mapped[str] = mapped_column(ForeignKey("homes.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AccessSession(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        # One tunnel address per live session of a home; concurrent approvals that pick the
        # same address collide here and retry.
        Index(
            "uq_live_tunnel_ip",
            "home_id",
            "tunnel_ip",
            unique=True,
            sqlite_where=text("state IN ('approved', 'active')"),
            postgresql_where=text("state IN ('approved', 'active')"),
        ),
        Index("ix_sessions_state_expires", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    home_id: Mapped[str] = mapped_column(ForeignKey("homes.id", ondelete="CASCADE"), index=True)
    technician_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    end_reason: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    grants: Mapped[list[Any]] = mapped_column(default=list)
    pending_grants: Mapped[list[Any]] = mapped_column(default=list)
    duration_s: Mapped[int]
    requested_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(64))
    # The home revision that first carried this session: the agent reporting it makes it active.
    approved_revision: Mapped[int | None]
    activated_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    ended_by: Mapped[str | None] = mapped_column(String(64))
    tunnel_ip: Mapped[str | None] = mapped_column(String(64))
    public_key: Mapped[str | None] = mapped_column(String(44))
    key_origin: Mapped[str] = mapped_column(String(16))
    # Secrets the agent or technician still needs; wiped when no longer needed, sealed
    # (encrypted) until then.
    preshared_key: Mapped[str | None] = mapped_column(Sealed("sessions.preshared_key"))
    private_key_once: Mapped[str | None] = mapped_column(Sealed("sessions.private_key_once"))
    config_downloads: Mapped[int] = mapped_column(Integer, default=0)
    last_handshake: Mapped[datetime | None]
    counters: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuditHead(Base):
    """One row: the chain's tip. Appends lock it, so two writers never fork the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditEvent(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Stored exactly as hashed (text), so no database round trip can change the digest.
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[str] = mapped_column(String(40))
    public_key: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    # Checkpoints are a chain of their own: 1, 2, 3, ... with no gap, each naming the
    # digest of the one before (NULL only on those signed before migration 0004).
    number: Mapped[int] = mapped_column(Integer, index=True, unique=True)
    prev: Mapped[str | None] = mapped_column(String(64))


class SealingKey(Base):
    """One row: the fingerprint of the key secrets are sealed with (``broker.secret_key``)."""

    __tablename__ = "sealing_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))


def table_of(model: type[Base]) -> Table:
    """The Core table behind a model, for hot-path statements that skip the ORM layer."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class DeploymentIdentity(Base):
    """The one row naming this deployment's keys (``broker/deployment.py``): every replica
    must hold the same CA and audit-signing key, or it refuses to start."""

    __tablename__ = "deployment_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    ca_fingerprint: Mapped[str] = mapped_column(String(64))
    ca_certificate: Mapped[str] = mapped_column(Text)
    audit_public_key: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime]
