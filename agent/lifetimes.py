"""Session lifetimes on the agent's monotonic clock, so wall-clock jumps cannot stretch them.

The broker sends ``expires_in`` measured on its own clock. A deadline is set when a session
first appears or when the document's revision changes (the broker has spoken again);
re-reading the same revision keeps it. After a restart, a session the kernel still holds
gets the smaller of the kernel's remaining time and the document's: the agent never
extends a lifetime on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from netpolicy import DesiredState


class SessionLifetimes:
    def __init__(self) -> None:
        self.revision: int | None = None
        self.deadlines: dict[str, float] = {}

    def plan(
        self,
        desired: DesiredState,
        received_at: float,
        now: float,
        kernel_left: Mapping[str, float],
    ) -> dict[str, float]:
        """Deadlines for the sessions of ``desired``; ``kernel_left`` counts only at start.

        ``received_at`` is when the document arrived, so retrying a failed apply later
        does not push deadlines later.
        """
        restarting = self.revision is None
        same_revision = self.revision == desired.revision
        deadlines: dict[str, float] = {}
        for session in desired.sessions:
            sid = session.session_id
            deadline = received_at + session.expires_in
            if same_revision and sid in self.deadlines:
                deadline = self.deadlines[sid]
            elif restarting and sid in kernel_left:
                deadline = min(deadline, now + kernel_left[sid])
            deadlines[sid] = deadline
        return deadlines

    def commit(self, revision: int, deadlines: Mapping[str, float]) -> None:
        self.revision = revision
        self.deadlines = dict(deadlines)


def remaining_at(deadlines: Mapping[str, float], now: float) -> dict[str, float]:
    """Seconds of life left per session at ``now`` (never negative)."""
    return {sid: max(0.0, deadline - now) for sid, deadline in deadlines.items()}
