"""How sessions and their reports read for a person (``--json`` prints the broker's objects)."""

from __future__ import annotations

from typing import Any

from netpolicy import Grant, PolicyError, format_duration
from ztb.client.commands.common import clock, fields, named, table


def grant_text(grant: object) -> str:
    if isinstance(grant, dict):
        try:
            return str(Grant.from_dict(grant))
        except PolicyError:
            return " ".join(str(v) for v in grant.values())
    return str(grant)


def grants_text(grants: object) -> str:
    return ", ".join(grant_text(g) for g in grants) if isinstance(grants, list) else "-"


def home_name(session: dict[str, Any]) -> str:
    return named(session, "home_name", "home_id")


def technician(session: dict[str, Any]) -> str:
    return named(session, "technician_email", "technician_id")


def approved_text(session: dict[str, Any]) -> str | None:
    """``olivia@home.example at 14:02 UTC``, or None before approval."""
    if not session.get("approved_at"):
        return None
    return f"{named(session, 'approved_by_name', 'approved_by')} at {clock(session['approved_at'])}"


def state_text(session: dict[str, Any]) -> str:
    state = str(session.get("state", "?"))
    reason = session.get("end_reason")
    return f"{state} ({reason})" if state == "ended" and reason else state


def when_text(session: dict[str, Any]) -> str:
    state = session.get("state")
    if state == "requested":
        duration = session.get("duration_s")
        return f"for {format_duration(duration)}" if isinstance(duration, int) else ""
    if state == "ended":
        return f"ended {clock(session.get('ended_at'))}"
    return f"expires {clock(session.get('expires_at'))}"


def describe(session: dict[str, Any]) -> str:
    """``session ses_x  approved  thermostat 192.168.1.20 tcp/443  expires 14:32 UTC``."""
    parts = [
        f"session {session.get('id')}",
        state_text(session),
        grants_text(session.get("grants")),
        when_text(session),
    ]
    if session.get("pending_grants"):
        parts.append(f"pending {grants_text(session.get('pending_grants'))}")
    return "  ".join(part for part in parts if part)


def _size(count: object) -> str:
    if not isinstance(count, int) or count < 0:
        return "-"
    if count < 1024:
        return f"{count} B"
    exponent = min(3, (count.bit_length() - 1) // 10)
    return f"{count / 1024**exponent:.1f} {('B', 'KiB', 'MiB', 'GiB')[exponent]}"


def report_text(report: dict[str, Any]) -> str:
    session: dict[str, Any] = report.get("session") or {}
    head = fields(
        [
            ("session", f"{session.get('id')}  {state_text(session)}"),
            ("home", home_name(session)),
            ("technician", technician(session)),
            ("reason", session.get("reason")),
            ("approved by", approved_text(session)),
            ("tunnel ip", session.get("tunnel_ip")),
            ("last handshake", clock(report.get("last_handshake"))),
        ]
    )
    grants = [
        (grant_text(g.get("grant")), str(g.get("packets", "-")), _size(g.get("bytes")))
        for g in report.get("grants") or []
        if isinstance(g, dict)
    ]
    events = [
        (clock(e.get("time")), str(e.get("action")), named(e, "actor_name", "actor"))
        for e in report.get("timeline") or []
        if isinstance(e, dict)
    ]
    return "\n\n".join(
        [
            head,
            table(("grant", "packets", "bytes"), grants),
            table(("time", "event", "by"), events),
        ]
    )
