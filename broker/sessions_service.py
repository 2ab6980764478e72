"""The doors to a session: who may request, decide, end, escalate and download it.

The API routes and the web pages both come here with the caller's ``Principal``; this
module finds the session or home the caller may see (others answer 404 and are audited),
checks the role and the home's step-up rule, and runs the transition of
``lifecycle_service`` in one unit of work. Decisions first end an overdue session in its
own transaction, so they see it ended even before the periodic job ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Any

from netpolicy import Grant
from netpolicy.wgquick import TechnicianConfig, render_wg_quick

from . import lifecycle_service as lifecycle
from .access import home_for, require_role, session_for
from .auth import Principal
from .context import Broker, UnitOfWork
from .db.models import LIVE_STATES, AccessSession, Home, User
from .errors import ApiError, denied
from .expiry import ACTOR as EXPIRY_ACTOR
from .totp import accept_totp
from .views import session_view

DECIDERS = ("admin", "homeowner")
Transition = Callable[[UnitOfWork, AccessSession], AccessSession]


def request_access(
    uow: UnitOfWork,
    principal: Principal,
    home_ref: str,
    grants: Sequence[str],
    duration_s: int,
    reason: str,
    public_key: str | None,
) -> dict[str, Any]:
    """A technician's request, for a home whose policy admits them."""
    require_role(principal, ["technician"], "session.request")
    home = home_for(uow.db, principal, home_ref, "session.request", as_technician=True)
    session = lifecycle.request_session(
        uow, principal, home, grants, duration_s, reason, public_key
    )
    return session_view(session)


def _expire_if_due(broker: Broker, session_id: str) -> None:
    """A cheap read first: only an overdue session costs a write transaction."""
    with broker.read_rows() as connection:
        due = lifecycle.is_due(connection, broker.clock(), broker.settings, session_id)
    if due:
        broker.run(lambda uow: lifecycle.expire_if_due(uow, session_id, EXPIRY_ACTOR))


def _decide(
    broker: Broker,
    principal: Principal,
    session_id: str,
    action: str,
    roles: Sequence[str] | None,
    transition: Transition,
) -> dict[str, Any]:
    """End the session first if it is overdue, then, in one unit of work: find it as the
    caller may see it, check the role, run ``transition``; the session as it is after."""
    _expire_if_due(broker, session_id)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        session = session_for(uow.db, principal, session_id, action)
        if roles is not None:
            require_role(principal, roles, action, session.id)
        return session_view(transition(uow, session))

    return broker.run(work)


def _check_step_up(uow: UnitOfWork, principal: Principal, home: Home, code: str | None) -> None:
    """A home may require a fresh TOTP code for every approval."""
    if not home.require_totp_for_approval:
        return
    user = uow.db.get(User, principal.id)
    assert user is not None
    if not user.totp_enabled:
        raise ApiError(403, "this home requires TOTP to approve; enable TOTP first")
    if not accept_totp(user, code, uow.now):
        raise denied(
            403,
            "a fresh TOTP code is required to approve",
            principal.actor,
            "session.approve",
            home.id,
        )


def approve(
    broker: Broker,
    principal: Principal,
    session_id: str,
    duration_s: int | None = None,
    totp: str | None = None,
) -> dict[str, Any]:
    """The homeowner (or an admin) approves as asked or shorter, or a pending escalation."""

    def transition(uow: UnitOfWork, session: AccessSession) -> AccessSession:
        home = uow.db.get(Home, session.home_id)
        assert home is not None
        _check_step_up(uow, principal, home, totp)
        return lifecycle.approve(uow, principal, session, duration_s)

    return _decide(broker, principal, session_id, "session.approve", DECIDERS, transition)


def deny(broker: Broker, principal: Principal, session_id: str, reason: str) -> dict[str, Any]:
    def transition(uow: UnitOfWork, session: AccessSession) -> AccessSession:
        return lifecycle.deny(uow, principal, session, reason)

    return _decide(broker, principal, session_id, "session.deny", DECIDERS, transition)


def revoke(broker: Broker, principal: Principal, session_id: str, reason: str) -> dict[str, Any]:
    """Anyone who may see the session may end it: homeowner, admin, its technician."""

    def transition(uow: UnitOfWork, session: AccessSession) -> AccessSession:
        return lifecycle.revoke(uow, principal, session, reason)

    return _decide(broker, principal, session_id, "session.revoke", None, transition)


def cancel(broker: Broker, principal: Principal, session_id: str) -> dict[str, Any]:
    def transition(uow: UnitOfWork, session: AccessSession) -> AccessSession:
        return lifecycle.cancel(uow, principal, session)

    return _decide(broker, principal, session_id, "session.cancel", ["technician"], transition)


def add_grants(
    broker: Broker, principal: Principal, session_id: str, grants: Sequence[str]
) -> dict[str, Any]:
    """Escalation: the extra grants wait for the homeowner's approval."""

    def transition(uow: UnitOfWork, session: AccessSession) -> AccessSession:
        return lifecycle.add_grants(uow, principal, session, grants)

    return _decide(broker, principal, session_id, "session.grants", ["technician"], transition)


@dataclass(frozen=True, slots=True)
class ConfigDownload:
    """A wg-quick file; ``private_key_included`` only in the first download of a session
    whose key pair the broker made (the key is then forgotten)."""

    text: str
    private_key_included: bool


def download_config(
    uow: UnitOfWork, principal: Principal, session_id: str, format: str
) -> ConfigDownload:
    """The session's technician only, while the session is live."""
    session = session_for(uow.db, principal, session_id, "session.config")
    if session.technician_id != principal.id:
        raise denied(
            403,
            "only the session's technician can download its config",
            principal.actor,
            "session.config",
            session.id,
        )
    if session.state not in LIVE_STATES or lifecycle.is_overdue(uow, session):
        raise denied(
            409,
            f"session is {session.state}, not live",
            principal.actor,
            "session.config",
            session.id,
        )
    home = uow.db.get(Home, session.home_id)
    assert home is not None and session.tunnel_ip is not None
    if not home.agent_public_key or not home.endpoint:
        raise ApiError(409, "the home's agent has no public key or endpoint yet (enroll it)")
    tunnel_ip = ip_address(session.tunnel_ip)
    assert isinstance(tunnel_ip, IPv4Address)
    private_key, session.private_key_once = session.private_key_once, None
    text = render_wg_quick(
        TechnicianConfig(
            private_key=private_key,
            tunnel_ip=tunnel_ip,
            router_public_key=home.agent_public_key,
            endpoint=home.endpoint,
            grants=tuple(Grant.from_dict(g) for g in session.grants),
            preshared_key=session.preshared_key,
        )
    )
    session.config_downloads += 1
    uow.audit(
        principal.actor,
        "session.config_downloaded",
        session.id,
        {"private_key_revealed": private_key is not None, "format": format},
    )
    return ConfigDownload(text, private_key is not None)
