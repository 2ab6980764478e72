"""The session state machine: requested -> approved -> active -> ended.

Every function runs inside one ``UnitOfWork`` on a session the caller may act on (the doors
in ``sessions_service``, the expiry job and agent reports decide that): it changes rows,
appends audit events, and queues agent wake-ups and webhooks that go out only after the
commit. Policy and address checks come from ``netpolicy``; ``PolicyError`` reaches the
caller as a 422.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from ipaddress import IPv4Network, ip_address, ip_network
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from netpolicy import (
    Grant,
    GrantSpec,
    HomeNetwork,
    PolicyError,
    merge_grants,
    validate_duration,
    validate_public_key,
)
from netpolicy.policy import HomePolicy, evaluate
from ztb.wgkeys import key_pair

from . import audit
from .auth import Principal
from .config import Settings
from .context import UnitOfWork
from .db.models import LIVE_STATES, AccessSession, Device, Home, table_of
from .errors import denied
from .ids import new_id
from .views import session_view
from .webhooks import Delivery


def home_network(home: Home) -> HomeNetwork:
    return HomeNetwork.from_dict(
        {"lan": home.lan, "router_ip": home.router_ip, "tunnel_pool": home.tunnel_pool}
    )


_DEVICES = table_of(Device)
_HOMES = table_of(Home)
_SESSIONS = table_of(AccessSession)
# Core statements built once (their cache keys are memoized): the hot path of every
# request, approval and ending pays for the SQL only, not for building it or for the ORM.
_DEVICE_ADDRESSES = select(_DEVICES.c.name, _DEVICES.c.ip).where(
    _DEVICES.c.home_id == bindparam("home_id"),
    _DEVICES.c.name.in_(bindparam("names", expanding=True)),
)
_BUMP_REVISION = (
    update(_HOMES)
    .where(_HOMES.c.id == bindparam("home_id"))
    .values(revision=_HOMES.c.revision + 1)
    .returning(_HOMES.c.revision)
)
_LOCK_HOME = select(_HOMES.c.id).where(_HOMES.c.id == bindparam("home_id")).with_for_update()
_LIVE_PEERS = select(_SESSIONS.c.tunnel_ip, _SESSIONS.c.public_key).where(
    _SESSIONS.c.home_id == bindparam("home_id"), _SESSIONS.c.state.in_(LIVE_STATES)
)


def resolve_grants(
    db: Session, home: Home, texts: Sequence[str]
) -> tuple[list[GrantSpec], list[Grant]]:
    """Grant texts -> specs (for policy) and grants on real device addresses (for the router)."""
    if not texts:
        raise PolicyError("a request needs at least one grant")
    specs = [GrantSpec.parse(text) for text in texts]
    rows = db.connection().execute(
        _DEVICE_ADDRESSES, {"home_id": home.id, "names": sorted({s.device for s in specs})}
    )
    addresses = {row.name: row.ip for row in rows}
    network = home_network(home)
    grants = []
    for spec in specs:
        ip = addresses.get(spec.device)
        if ip is None:
            raise PolicyError(f"unknown device {spec.device!r} in this home")
        grant = Grant(ip_address(ip), spec.proto, spec.ports, device=spec.device)
        grants.append(network.validate_grant(grant))
    return specs, grants


def grant_dicts(grants: Sequence[Grant]) -> list[dict[str, object]]:
    return [grant.to_dict() for grant in merge_grants(tuple(grants))]


def _grants(stored: list[Any]) -> list[Grant]:
    return [Grant.from_dict(item) for item in stored]


def emit(uow: UnitOfWork, home: Home, event: str, session: AccessSession) -> None:
    """Queue the homeowner's webhook for this session event, if the home has one."""
    if home.webhook_url and home.webhook_secret:
        payload = {
            "event": event,
            "time": uow.now.isoformat(),
            "home_id": home.id,
            "session": session_view(session),
            "audit": audit.tip_digest(uow.db),
        }
        uow.webhook(Delivery(home.id, home.webhook_url, home.webhook_secret, event, payload))


def bump_revision(uow: UnitOfWork, home_id: str) -> int:
    """Atomic ``revision = revision + 1`` (no lost update between replicas)."""
    revision = int(uow.db.connection().execute(_BUMP_REVISION, {"home_id": home_id}).scalar_one())
    home = uow.db.identity_map.get(identity_key(Home, home_id))
    if home is not None:  # keep a loaded row true without marking it changed
        set_committed_value(home, "revision", revision)
    uow.wake_agents(home_id)
    return revision


def request_session(
    uow: UnitOfWork,
    technician: Principal,
    home: Home,
    texts: Sequence[str],
    duration_s: int,
    reason: str,
    public_key: str | None,
) -> AccessSession:
    policy = HomePolicy.from_dict(home.policy)
    specs, grants = resolve_grants(uow.db, home, texts)
    decision = evaluate(policy, technician.identities, specs, duration_s)
    if public_key is not None:
        validate_public_key(public_key)
    session = AccessSession(
        id=new_id("ses"),
        home_id=home.id,
        technician_id=technician.id,
        state="requested",
        reason=reason,
        grants=grant_dicts(grants),
        pending_grants=[],
        duration_s=decision.duration_s,
        requested_at=uow.now,
        public_key=public_key,
        key_origin="technician" if public_key else "broker",
        config_downloads=0,
        counters={},
    )
    uow.db.add(session)
    uow.db.flush()
    uow.audit(
        technician.actor,
        "session.requested",
        session.id,
        {"home_id": home.id, "grants": [str(spec) for spec in specs], "duration_s": duration_s},
    )
    uow.transition("requested")
    emit(uow, home, "session.requested", session)
    if decision.auto_rule is not None:
        _approve_new(uow, session, home, f"policy:auto-approve#{decision.auto_rule}", duration_s)
    return session


def _allocate_tunnel_ip(db: Session, home: Home, public_key: str) -> str:
    """Lowest free host of the pool; the first host is the router's own tunnel address.
    Refuses a public key that another live session of the home already uses.

    Approvals in one home take turns on the home's row lock (PostgreSQL; on SQLite the
    database lock already orders writers), so they do not all pick the same address and
    fail together. Should two still collide on ``uq_live_tunnel_ip``, the loser's
    transaction is retried (``Broker.run``) and sees the winner's address as taken.
    """
    connection = db.connection()
    connection.execute(_LOCK_HOME, {"home_id": home.id})
    peers = connection.execute(_LIVE_PEERS, {"home_id": home.id}).all()
    if any(peer.public_key == public_key for peer in peers):
        raise PolicyError("this public key is already used by another live session of the home")
    taken = {peer.tunnel_ip for peer in peers}
    pool = ip_network(home.tunnel_pool)
    assert isinstance(pool, IPv4Network)
    hosts = pool.hosts()
    next(hosts)
    for host in hosts:
        if str(host) not in taken:
            return str(host)
    raise PolicyError(f"the tunnel pool {pool} of this home is full")


def _approve_new(
    uow: UnitOfWork, session: AccessSession, home: Home, approver: str, duration_s: int
) -> None:
    db = uow.db
    if session.public_key is None:
        session.private_key_once, session.public_key = key_pair()
    session.tunnel_ip = _allocate_tunnel_ip(db, home, session.public_key)
    session.preshared_key = base64.b64encode(os.urandom(32)).decode()
    session.state = "approved"
    session.approved_at = uow.now
    session.approved_by = approver
    session.duration_s = duration_s
    session.expires_at = uow.now + timedelta(seconds=duration_s)
    db.flush()  # the unique index speaks here
    session.approved_revision = bump_revision(uow, home.id)
    uow.audit(
        approver,
        "session.approved",
        session.id,
        {
            "duration_s": duration_s,
            "tunnel_ip": session.tunnel_ip,
            "key_origin": session.key_origin,
        },
    )
    uow.transition("approved")
    emit(uow, home, "session.approved", session)


def is_overdue(uow: UnitOfWork, session: AccessSession) -> bool:
    """This loaded session's time is up (the expiry job may not have ended it yet)."""
    if session.state in LIVE_STATES:
        return session.expires_at is not None and session.expires_at <= uow.now
    if session.state == "requested":
        ttl = timedelta(seconds=uow.broker.settings.request_ttl_s)
        return session.requested_at + ttl <= uow.now
    return False


def approve(
    uow: UnitOfWork, approver: Principal, session: AccessSession, duration_s: int | None
) -> AccessSession:
    home = uow.db.get(Home, session.home_id)
    assert home is not None
    if is_overdue(uow, session):  # the caller ran the expiry first; this is the race guard
        raise denied(409, "session has expired", approver.actor, "session.approve", session.id)
    if session.state == "requested":
        duration = session.duration_s if duration_s is None else duration_s
        if duration > session.duration_s:
            raise PolicyError(
                f"approval may shorten the requested {session.duration_s}s, not lengthen it"
            )
        validate_duration(duration, HomePolicy.from_dict(home.policy).max_duration_s)
        _approve_new(uow, session, home, approver.actor, duration)
    elif session.state in LIVE_STATES and session.pending_grants:
        added = session.pending_grants
        session.grants = grant_dicts(_grants(session.grants) + _grants(added))
        session.pending_grants = []
        bump_revision(uow, home.id)
        uow.audit(approver.actor, "session.escalation_approved", session.id, {"grants": added})
        emit(uow, home, "session.approved", session)
    else:
        what = "has ended" if session.state == "ended" else "is already approved"
        raise denied(409, f"session {what}", approver.actor, "session.approve", session.id)
    return session


def deny(uow: UnitOfWork, actor: Principal, session: AccessSession, reason: str) -> AccessSession:
    if session.state == "requested":
        return end(uow, session, "denied", actor.actor, reason)
    if session.state in LIVE_STATES and session.pending_grants:
        dropped = session.pending_grants
        session.pending_grants = []
        uow.audit(
            actor.actor,
            "session.escalation_denied",
            session.id,
            {"grants": dropped, "reason": reason},
        )
        return session
    raise denied(
        409, f"session is {session.state}: nothing to deny", actor.actor, "session.deny", session.id
    )


def revoke(uow: UnitOfWork, actor: Principal, session: AccessSession, reason: str) -> AccessSession:
    if session.state == "ended":
        raise denied(409, "session has already ended", actor.actor, "session.revoke", session.id)
    return end(uow, session, "revoked", actor.actor, reason)


def cancel(uow: UnitOfWork, actor: Principal, session: AccessSession) -> AccessSession:
    if session.state != "requested":
        raise denied(
            409,
            "only a requested session can be cancelled",
            actor.actor,
            "session.cancel",
            session.id,
        )
    return end(uow, session, "cancelled", actor.actor)


def end(
    uow: UnitOfWork, session: AccessSession, end_reason: str, actor: str, reason: str = ""
) -> AccessSession:
    """End a session and forget its secrets; the agent drops the peer at the next revision."""
    was_live = session.state in LIVE_STATES
    session.state = "ended"
    session.end_reason = end_reason
    session.ended_at = uow.now
    session.ended_by = actor
    session.preshared_key = None
    session.private_key_once = None
    session.pending_grants = []
    uow.db.flush()
    if was_live:
        bump_revision(uow, session.home_id)
    details: dict[str, Any] = {"end_reason": end_reason}
    if reason:
        details["reason"] = reason
    uow.audit(actor, "session.ended", session.id, details)
    uow.transition(end_reason)
    home = uow.db.get(Home, session.home_id)
    assert home is not None
    emit(uow, home, "session.ended", session)
    return session


# Statements built once with bind parameters: SQLAlchemy memoizes a statement's cache key,
# so the per-decision pre-check skips construction and key generation.
DUE = or_(
    and_(AccessSession.state.in_(LIVE_STATES), AccessSession.expires_at <= bindparam("now")),
    and_(
        AccessSession.state == "requested",
        AccessSession.requested_at <= bindparam("stale_request"),
    ),
)
_THIS_ONE_DUE = and_(
    AccessSession.id == bindparam("session_id"), AccessSession.end_reason.is_(None), DUE
)
_IS_DUE = select(exists().where(_THIS_ONE_DUE))


def due_params(now: datetime, settings: Settings, **more: str) -> dict[str, Any]:
    return {"now": now, "stale_request": now - timedelta(seconds=settings.request_ttl_s)} | more


def is_due(db: Session | Connection, now: datetime, settings: Settings, session_id: str) -> bool:
    """The session is overdue and not yet ended: a read, for a cheap pre-check."""
    return bool(db.scalar(_IS_DUE, due_params(now, settings, session_id=session_id)))


def expire_if_due(uow: UnitOfWork, session_id: str, actor: str) -> bool:
    """End one overdue session; False if it is not due or another process got there first.

    Setting ``end_reason`` is the claim (a conditional ``UPDATE``, safe across replicas);
    the rest of the ending happens in ``end``.
    """
    claimed = uow.db.execute(
        update(AccessSession)
        .where(_THIS_ONE_DUE)
        .values(end_reason="expired")
        .execution_options(synchronize_session=False),
        due_params(uow.now, uow.broker.settings, session_id=session_id),
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session = uow.db.get(AccessSession, session_id, populate_existing=True)
    assert session is not None
    end(uow, session, "expired", actor)
    return True


def activate_applied(uow: UnitOfWork, home: Home, revision: int, actor: str) -> None:
    """approved -> active for every session of the home that ``revision`` carries, now
    that its agent applied it. Each is claimed by a conditional ``UPDATE``, so two
    reports (or replicas) never activate one session twice."""
    ready = uow.db.scalars(
        select(AccessSession).where(
            AccessSession.home_id == home.id,
            AccessSession.state == "approved",
            AccessSession.approved_revision <= revision,
            AccessSession.expires_at > uow.now,
        )
    ).all()
    for session in ready:
        claimed = uow.db.execute(
            update(AccessSession)
            .where(AccessSession.id == session.id, AccessSession.state == "approved")
            .values(state="active", activated_at=uow.now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            uow.db.refresh(session)
            uow.audit(actor, "session.active", session.id, {"revision": revision})
            uow.transition("active")
            emit(uow, home, "session.started", session)


def add_grants(
    uow: UnitOfWork, technician: Principal, session: AccessSession, texts: Sequence[str]
) -> AccessSession:
    """Escalation: extra grants wait in ``pending_grants`` until the homeowner approves."""
    if session.state not in LIVE_STATES or is_overdue(uow, session):
        raise denied(
            409,
            "grants can only be added to a live session",
            technician.actor,
            "session.grants",
            session.id,
        )
    home = uow.db.get(Home, session.home_id)
    assert home is not None
    specs, grants = resolve_grants(uow.db, home, texts)
    evaluate(HomePolicy.from_dict(home.policy), technician.identities, specs, session.duration_s)
    session.pending_grants = grant_dicts(_grants(session.pending_grants) + grants)
    uow.audit(
        technician.actor,
        "session.escalation_requested",
        session.id,
        {"grants": [str(spec) for spec in specs]},
    )
    emit(uow, home, "session.requested", session)
    return session
