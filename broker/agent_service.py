"""What the home agent sees and tells: desired state, reports; its certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, ip_address
from typing import Any

from sqlalchemy import Connection, bindparam, select

from netpolicy import (
    AgentReport,
    DesiredState,
    Grant,
    HomeNetwork,
    LiveSession,
    PolicyError,
    validate_public_key,
)

from . import enroll_token, pki
from .auth import AgentPrincipal
from .clock import rfc3339
from .context import Broker, UnitOfWork
from .counters import counter_key
from .db.models import (
    LIVE_STATES,
    AccessSession,
    AgentCertificate,
    EnrollmentToken,
    Home,
    HomeAgent,
    table_of,
)
from .errors import ApiError, denied
from .ids import new_id
from .lifecycle_service import activate_applied
from .state_cache import StateAtRevision

_HOMES, _SESSIONS = table_of(Home), table_of(AccessSession)
_NETWORK = select(_HOMES.c.lan, _HOMES.c.router_ip, _HOMES.c.tunnel_pool).where(
    _HOMES.c.id == bindparam("home_id")
)
_LIVE_SESSIONS = (
    select(
        _SESSIONS.c.id,
        _SESSIONS.c.public_key,
        _SESSIONS.c.preshared_key,
        _SESSIONS.c.tunnel_ip,
        _SESSIONS.c.grants,
        _SESSIONS.c.expires_at,
    )
    .where(
        _SESSIONS.c.home_id == bindparam("home_id"),
        _SESSIONS.c.state.in_(LIVE_STATES),
        _SESSIONS.c.expires_at > bindparam("now"),
    )
    .order_by(_SESSIONS.c.id)
)


def state_at_revision(
    connection: Connection, home_id: str, revision: int, now: datetime
) -> StateAtRevision:
    """All live sessions of the home at ``revision`` (read in the transaction that saw
    it), checked by netpolicy once; lifetimes kept as deadlines (see ``state_cache``)."""
    lan, router_ip, tunnel_pool = connection.execute(_NETWORK, {"home_id": home_id}).one()
    network = HomeNetwork.from_dict(
        {"lan": lan, "router_ip": router_ip, "tunnel_pool": tunnel_pool}
    )
    sessions, deadlines = [], []
    for row in connection.execute(_LIVE_SESSIONS, {"home_id": home_id, "now": now}):
        tunnel_ip = ip_address(row.tunnel_ip)
        assert isinstance(tunnel_ip, IPv4Address) and row.public_key
        sessions.append(
            LiveSession(
                session_id=row.id,
                public_key=row.public_key,
                preshared_key=row.preshared_key,
                tunnel_ip=tunnel_ip,
                grants=tuple(Grant.from_dict(g) for g in row.grants),
                expires_in=(row.expires_at - now).total_seconds(),
            )
        )
        deadlines.append(row.expires_at)
    state = DesiredState(
        home_id=home_id, revision=revision, network=network, sessions=tuple(sessions)
    ).to_dict()
    timed = tuple(
        ({k: v for k, v in session.items() if k != "expires_in"}, expires_at)
        for session, expires_at in zip(state.pop("sessions"), deadlines, strict=True)
    )
    return StateAtRevision(revision, state, timed)


def receive_report(broker: Broker, agent: AgentPrincipal, body: bytes) -> None:
    """Parse an agent's report (``netpolicy.AgentReport``) and store what it says.

    A report that does not parse is refused whole with 400 and the refusal is audited:
    nothing of it is stored. Parsing happens before the transaction, so a large report
    does not hold the write lock while it is checked."""
    try:
        report = AgentReport.from_json(body)
    except PolicyError as exc:
        raise denied(400, str(exc), agent.actor, "agent.report", agent.home_id) from None
    broker.run(lambda uow: record_report(uow, agent, report))


def record_report(uow: UnitOfWork, agent: AgentPrincipal, report: AgentReport) -> None:
    """Applied revision makes sessions active; handshakes and counters feed the report."""
    home = uow.db.get(Home, agent.home_id)
    row = uow.db.get(HomeAgent, agent.agent_id)
    assert home is not None and row is not None
    revision = report.revision
    if revision > home.revision:
        raise ApiError(422, f"revision {revision} is newer than the home's {home.revision}")
    row.applied_revision = max(row.applied_revision, revision)
    row.last_seen_at = uow.now
    activate_applied(uow, home, revision, agent.actor)
    sessions = {
        s.id: s
        for s in uow.db.scalars(
            select(AccessSession).where(
                AccessSession.home_id == home.id, AccessSession.public_key.is_not(None)
            )
        )
    }
    live_by_key = {s.public_key: s for s in sessions.values() if s.state in LIVE_STATES}
    for peer in report.peers:
        peer_session = live_by_key.get(peer.public_key)
        if peer_session is not None and peer.last_handshake:
            peer_session.last_handshake = datetime.fromtimestamp(peer.last_handshake, UTC)
    for element in report.elements:
        counted = sessions.get(element.session_id)
        if counted is None:
            continue  # not this home's: an agent reports only about its own home
        key = counter_key(str(element.device_ip), element.proto, str(element.ports))
        counted.counters = {
            **counted.counters,
            key: {"packets": element.packets, "bytes": element.bytes},
        }


def _ca(uow: UnitOfWork) -> pki.CertificateAuthority:
    ca = uow.broker.ca
    if ca is None:
        raise ApiError(409, "the broker has no CA yet (run 'ztb broker bootstrap')")
    return ca


def ca_pem(uow: UnitOfWork) -> dict[str, Any]:
    return {"ca_pem": _ca(uow).certificate_pem}


def issue_certificate(uow: UnitOfWork, agent: HomeAgent, csr_pem: str) -> str:
    """Sign ``csr_pem`` for ``agent`` and record it; a bad CSR raises 400 before any change."""
    lifetime = timedelta(seconds=uow.broker.settings.agent_cert_lifetime_s)
    try:
        cert = pki.sign_agent_csr(_ca(uow), csr_pem, agent.home_id, agent.id, uow.now, lifetime)
    except pki.PKIError as exc:
        raise ApiError(400, str(exc)) from None
    serial = pki.serial_hex(cert)
    uow.db.add(
        AgentCertificate(
            serial=serial,
            agent_id=agent.id,
            home_id=agent.home_id,
            issued_at=uow.now,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
    )
    agent.cert_serial = serial
    agent.cert_not_after = cert.not_valid_after_utc
    return pki.certificate_pem(cert)


def create_enroll_token(uow: UnitOfWork, home: Home, ttl_s: int, actor: str) -> dict[str, Any]:
    try:
        minted = enroll_token.mint(_ca(uow).fingerprint, uow.now, timedelta(seconds=ttl_s))
    except enroll_token.EnrollTokenError as exc:
        raise ApiError(422, str(exc)) from None
    row = EnrollmentToken(
        id=new_id("enr"),
        home_id=home.id,
        token_hash=minted.token_hash,
        created_at=uow.now,
        expires_at=minted.expires_at,
    )
    uow.db.add(row)
    uow.db.flush()
    uow.audit(actor, "agent.enroll_token_created", home.id, {"token_id": row.id})
    return {"id": row.id, "token": minted.token, "expires_at": rfc3339(minted.expires_at)}


def enroll(uow: UnitOfWork, body: dict[str, Any]) -> dict[str, Any]:
    """Redeem a one-time enrollment token for a client certificate; replays are refused.

    Everything (token spent, agent row, certificate) is one transaction: a CSR the CA
    refuses rolls it all back, so a typo does not burn the token.
    """
    try:
        token_hash = enroll_token.token_hash(body["token"])
    except enroll_token.EnrollTokenError as exc:
        raise ApiError(401, str(exc)) from None
    row = uow.db.scalars(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash).with_for_update()
    ).first()
    if row is None:
        raise ApiError(401, "enrollment token is unknown")
    try:
        enroll_token.check_redeemable(row.expires_at, row.used_at, uow.now)
    except enroll_token.EnrollTokenError as exc:
        raise denied(401, str(exc), "anonymous", "agent.enroll", row.id) from None
    validate_public_key(body["wg_public_key"])
    home = uow.db.get(Home, row.home_id)
    assert home is not None
    row.used_at = uow.now
    agent = HomeAgent(
        id=new_id("agt"),
        home_id=home.id,
        wg_public_key=body["wg_public_key"],
        interface=body["interface"],
        listen_port=body["listen_port"],
        endpoint=body["endpoint"],
        applied_revision=0,
        created_at=uow.now,
    )
    uow.db.add(agent)
    uow.db.flush()
    certificate = issue_certificate(uow, agent, body["csr_pem"])
    home.agent_public_key = body["wg_public_key"]
    home.endpoint = body["endpoint"]
    uow.audit(
        f"agent:{agent.id}",
        "agent.enrolled",
        home.id,
        {
            "token_id": row.id,
            "serial": agent.cert_serial,
            "not_after": rfc3339(agent.cert_not_after),
        },
    )
    uow.wake_agents(home.id)
    return {
        "certificate_pem": certificate,
        "ca_pem": _ca(uow).certificate_pem,
        "home_id": home.id,
        "agent_id": agent.id,
    }


def renew(uow: UnitOfWork, caller: AgentPrincipal, csr_pem: str) -> dict[str, Any]:
    """A new certificate for the caller's own identity; the one it called with stays good
    until the new one is first seen."""
    agent = uow.db.get(HomeAgent, caller.agent_id)
    assert agent is not None
    previous = caller.serial
    certificate = issue_certificate(uow, agent, csr_pem)
    agent.previous_cert_serial = previous
    uow.audit(
        caller.actor,
        "agent.certificate_renewed",
        agent.home_id,
        {
            "previous": previous,
            "serial": agent.cert_serial,
            "not_after": rfc3339(agent.cert_not_after),
        },
    )
    return {"certificate_pem": certificate}


def revoke_agent(uow: UnitOfWork, home: Home, agent_ref: str, actor: str) -> HomeAgent:
    """Cut an agent off at once: every request checks ``revoked_at``. Its grants already in
    the kernel still expire on their own."""
    agent = uow.db.scalars(
        select(HomeAgent).where(HomeAgent.home_id == home.id, HomeAgent.id == agent_ref)
    ).first()
    if agent is None:
        raise ApiError(404, "agent not found")
    if agent.revoked_at is not None:
        raise ApiError(409, f"agent {agent.id} is already revoked")
    agent.revoked_at = uow.now
    if home.agent_public_key == agent.wg_public_key:
        # Technicians' configs must name a router that still runs: the newest other agent.
        successor = uow.db.scalars(
            select(HomeAgent)
            .where(
                HomeAgent.home_id == home.id,
                HomeAgent.revoked_at.is_(None),
                HomeAgent.id != agent.id,
            )
            .order_by(HomeAgent.created_at.desc())
        ).first()
        home.agent_public_key = successor.wg_public_key if successor else None
        home.endpoint = successor.endpoint if successor else home.endpoint
    uow.audit(actor, "agent.revoked", home.id, {"agent_id": agent.id, "serial": agent.cert_serial})
    uow.wake_agents(home.id)  # a long-poll in progress re-checks and answers 401
    return agent
