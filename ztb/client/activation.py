"""Wait until the home router has applied an approved session, before handing out its config.

Shared by ``ztb session config`` and the lab's access benchmark, so both measure the same
thing the technician experiences.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ztb.client.http import ZtbClient

ACTIVE_WAIT_S = 10.0
ACTIVE_POLL_S = 0.02
ACTIVE_POLL_MAX_S = 0.25


def wait_until_active(
    client: ZtbClient, session_id: str, limit_s: float, *, announce: bool = True
) -> dict[str, Any]:
    """Hold the config until the router has applied the session (state ``active``);
    returns the session as last read.

    A tunnel brought up before the router has the peer sends a handshake that goes
    unanswered, and WireGuard retries only after 5 s: waiting here is what makes access
    start in a fraction of a second. Polls start fast (the agent usually applies within
    milliseconds) and back off; past ``limit_s`` the config is given anyway.
    """
    deadline = time.monotonic() + limit_s
    pause = ACTIVE_POLL_S
    while True:
        session = client.get_session(session_id)
        if session.get("state") != "approved" or time.monotonic() >= deadline:
            return session
        if announce:
            print("waiting for the home router to apply the session...", file=sys.stderr)
            announce = False
        time.sleep(pause)
        pause = min(pause * 1.5, ACTIVE_POLL_MAX_S)
