"""Homes and devices a caller may see: owners and admins see a home whole, a technician
its name and devices once its policy admits them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..access import can_see_home, home_for
from ..auth import Principal
from ..db.models import Device, Home, HomeAgent
from ..views import device_view, home_summary, home_view
from .names import Names, names_for


def home_with_agents(db: Session, home: Home, names: Names | None = None) -> dict[str, Any]:
    """The whole home, with its owner's email (``names`` when the caller looked many up)."""
    agents = list(db.scalars(select(HomeAgent).where(HomeAgent.home_id == home.id)))
    emails = (names or names_for(db, user_ids=[home.owner_id])).emails
    return {**home_view(home, agents), "owner_email": emails.get(home.owner_id)}


def list_homes(db: Session, principal: Principal) -> dict[str, Any]:
    homes = db.scalars(select(Home).order_by(Home.name))
    if principal.role == "technician":
        visible = [h for h in homes if can_see_home(principal, h, as_technician=True)]
        return {"homes": [home_summary(h) for h in visible]}
    visible = [h for h in homes if can_see_home(principal, h)]
    names = names_for(db, user_ids=(h.owner_id for h in visible))
    return {"homes": [home_with_agents(db, h, names) for h in visible]}


def get_home(db: Session, principal: Principal, home_ref: str) -> dict[str, Any]:
    return home_with_agents(db, home_for(db, principal, home_ref, "home.read"))


def list_devices(db: Session, principal: Principal, home_ref: str) -> dict[str, Any]:
    home = home_for(db, principal, home_ref, "device.list", as_technician=True)
    devices = db.scalars(select(Device).where(Device.home_id == home.id).order_by(Device.name))
    return {"devices": [device_view(d) for d in devices]}
