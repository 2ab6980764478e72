"""The JSON shapes of docs/api.md, built from rows; secrets never appear here."""

from __future__ import annotations

from typing import Any

from .clock import rfc3339
from .db.models import AccessSession, ApiToken, Device, Home, HomeAgent, User


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "totp_enabled": user.totp_enabled,
    }


def token_view(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "user_id": token.user_id,
        "name": token.name,
        "created_at": rfc3339(token.created_at),
        "expires_at": rfc3339(token.expires_at),
        "revoked": token.revoked_at is not None,
    }


def agent_view(agent: HomeAgent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "interface": agent.interface,
        "listen_port": agent.listen_port,
        "endpoint": agent.endpoint,
        "wg_public_key": agent.wg_public_key,
        "applied_revision": agent.applied_revision,
        "last_seen_at": rfc3339(agent.last_seen_at),
        "cert_not_after": rfc3339(agent.cert_not_after),
        "cert_serial": agent.cert_serial,
        "revoked": agent.revoked_at is not None,
    }


def home_view(home: Home, agents: list[HomeAgent]) -> dict[str, Any]:
    """For the home's owner and admins."""
    return {
        "id": home.id,
        "name": home.name,
        "owner_id": home.owner_id,
        "lan": home.lan,
        "router_ip": home.router_ip,
        "tunnel_pool": home.tunnel_pool,
        "endpoint": home.endpoint,
        "agent_public_key": home.agent_public_key,
        "webhook_url": home.webhook_url,
        "webhook_secret": home.webhook_secret,
        "require_totp_for_approval": home.require_totp_for_approval,
        "revision": home.revision,
        "policy": home.policy,
        "agents": [agent_view(agent) for agent in agents],
    }


def home_summary(home: Home) -> dict[str, Any]:
    """What a technician may know about a home they may request access to."""
    return {"id": home.id, "name": home.name}


def device_view(device: Device) -> dict[str, Any]:
    return {"id": device.id, "name": device.name, "ip": device.ip, "mac": device.mac}


def session_view(session: AccessSession) -> dict[str, Any]:
    return {
        "id": session.id,
        "home_id": session.home_id,
        "technician_id": session.technician_id,
        "state": session.state,
        "end_reason": session.end_reason,
        "reason": session.reason,
        "grants": session.grants,
        "pending_grants": session.pending_grants,
        "duration_s": session.duration_s,
        "requested_at": rfc3339(session.requested_at),
        "approved_at": rfc3339(session.approved_at),
        "approved_by": session.approved_by,
        "activated_at": rfc3339(session.activated_at),
        "expires_at": rfc3339(session.expires_at),
        "ended_at": rfc3339(session.ended_at),
        "ended_by": session.ended_by,
        "tunnel_ip": session.tunnel_ip,
        "public_key": session.public_key,
        "key_origin": session.key_origin,
    }
