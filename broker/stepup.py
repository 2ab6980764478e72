"""Step-up: proof beyond the bearer token before a change that weakens a home's protection.

A stolen token alone must not be able to turn off the TOTP rule for approvals, open the
policy (auto-approve rules, longer sessions, more technicians), redirect or silence the
owner's webhook, change the owner's password or mint a token that outlives it. Those
changes need, in the ``X-Ztb-Step-Up`` header, a current TOTP code where the account has
TOTP, else the account's password. An account with neither has nothing beyond its token
to prove with (its token could set a first password anyway): its changes go through, and
like every such change they are audited (``step_up: none``) and the owner's webhooks are
told. Homeowners who turn on TOTP for approvals have TOTP, so the rule that matters most
is always guarded.

The password is checked by ``proof_for`` before the write transaction: hashing takes tens
of milliseconds and must never hold the database write lock. A TOTP code is checked
inside it, because accepting one records its time step (no replays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from .auth import Principal
from .context import Broker, UnitOfWork
from .db.models import Home, User
from .errors import denied
from .passwords import check_password
from .totp import accept_totp
from .webhooks import Delivery

HEADER = "X-Ztb-Step-Up"


@dataclass(frozen=True, slots=True)
class Proof:
    """What the caller sent in the step-up header, and whether it is the password."""

    given: str | None = None
    password_ok: bool = False


NO_PROOF = Proof()


def proof_for(broker: Broker, principal: Principal, given: str | None) -> Proof:
    """Check a password proof now, outside any write transaction."""
    if not given:
        return NO_PROOF
    with broker.read() as db:
        stored = db.scalars(select(User.password_hash).where(User.id == principal.id)).first()
    return Proof(given, check_password(given, stored))


def require(uow: UnitOfWork, principal: Principal, proof: Proof, action: str, obj: str) -> str:
    """Refuse (403, audited) unless the proof is good; returns the factor used
    (``totp``, ``password``, or ``none`` for an account with neither)."""
    user = uow.db.get(User, principal.id)
    assert user is not None
    if user.totp_enabled:
        factor, ok = "totp", accept_totp(user, proof.given, uow.now)
        wanted = "a current TOTP code"
    elif user.password_hash:
        factor, ok, wanted = "password", proof.password_ok, "your password"
    else:
        return "none"  # the token is all this account has: audited and told, not refused
    if not ok:
        raise denied(
            403,
            f"this change weakens protection: send {wanted} in the {HEADER} header",
            principal.actor,
            action,
            obj,
        )
    return factor


def tell_owner(
    uow: UnitOfWork, homes: list[Home], event: str, actor: str, details: dict[str, Any]
) -> None:
    """Queue a notice to each home's webhook (after the commit, like session events)."""
    for home in homes:
        if home.webhook_url and home.webhook_secret:
            payload = {
                "event": event,
                "time": uow.now.isoformat(),
                "home_id": home.id,
                "actor": actor,
                "details": details,
            }
            uow.webhook(Delivery(home.id, home.webhook_url, home.webhook_secret, event, payload))


def homes_of(uow: UnitOfWork, user_id: str) -> list[Home]:
    return list(uow.db.scalars(select(Home).where(Home.owner_id == user_id)))


def policy_weakened(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How ``new`` admits more than ``old`` (both in ``HomePolicy.to_dict`` form)."""
    reasons = []
    if new["max_duration_s"] > old["max_duration_s"]:
        reasons.append("longer sessions")
    for key, what in (("technicians", "more technicians"), ("allowed", "more grants")):
        # An empty list admits everyone / everything.
        if old[key] and (not new[key] or not set(new[key]) <= set(old[key])):
            reasons.append(what)
    old_rules = [sorted(rule.items(), key=str) for rule in old["auto_approve"]]
    if any(sorted(rule.items(), key=str) not in old_rules for rule in new["auto_approve"]):
        reasons.append("new auto-approve rules")
    return reasons
