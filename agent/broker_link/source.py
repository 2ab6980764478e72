"""Desired state from the broker: an mTLS long-poll in a background thread.

The fetch thread re-issues ``GET /v1/agent/state?after=REV&wait=25`` as soon as each
answer is in, so a revoke reaches the agent as soon as the broker wakes the poll; the
run loop takes documents through ``poll`` like any other source and never waits on the
network. Reports go out from a second thread, newest first, so a slow broker cannot
hold up the loop that ends expired sessions.

Broker unreachable or failing: the agent keeps enforcing what it has (the loop still
ends sessions on time), adds nothing new, and reconnects with jittered backoff, one log
line per failure. Certificate refused (401/403) or expired: one loud line and no more
fetching; the kernel keeps enforcing and every grant still expires on its own.

Certificate renewal runs in a short-lived child (``python -m agent.broker_link.renew_once``) so
``cryptography`` never loads in the daemon.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from netpolicy import AgentReport, PolicyError

from ..desired_file import Delivery
from ..events import log_event
from ..state_dir import StateDir, StateError
from ..status import bounded_report
from .http_lite import BrokerLink, BrokerLinkError, CertificateRejected

WAIT_S = 25
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 10.0  # back on the long-poll within 10 s of a broker restart
_RENEW_TIMEOUT_S = 120
_RENEW_RETRY = timedelta(seconds=30)
_NETWORK_ERRORS = (BrokerLinkError, OSError, StateError)


@dataclass(frozen=True, slots=True)
class RenewalOutcome:
    renewed: bool
    next_attempt: datetime
    failures: int
    level: str = "INFO"
    error: str | None = None


Renewer = Callable[[Path, int], RenewalOutcome]


def backoff_delay(
    attempt: int,
    rand: Callable[[], float] = random.random,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): exponential, equal jitter.

    Half the window is fixed so an agent never spins; the other half is random so a
    thousand agents cut off by one broker restart do not come back in the same second.
    """
    window = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 32))
    return window / 2 + window / 2 * rand()


def renew_in_child(state_dir: Path, failures: int) -> RenewalOutcome:
    """Run ``agent.broker_link.renew_once`` in a child process and read its one JSON line."""
    argv = [sys.executable, "-m", "agent.broker_link.renew_once", "--state-dir", str(state_dir)]
    argv += ["--failures", str(failures)]
    stderr = ""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_RENEW_TIMEOUT_S, check=False
        )
        stderr = done.stderr
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return RenewalOutcome(
            renewed=bool(data["renewed"]),
            next_attempt=datetime.fromisoformat(data["next_attempt"]),
            failures=int(data["failures"]),
            level=str(data["level"]),
            error=data["error"],
        )
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as exc:
        last = stderr.strip().splitlines()[-1:] or [str(exc) or type(exc).__name__]
        return RenewalOutcome(
            renewed=False,
            next_attempt=datetime.now(UTC) + _RENEW_RETRY * 2 ** min(failures, 5),
            failures=failures + 1,
            level="ERROR",
            error=f"renewal child failed: {last[0]}",
        )


def carry_finals(older: AgentReport, newer: AgentReport) -> AgentReport:
    """``newer`` plus the final counters of ``older`` it does not have.

    Only the newest waiting report is sent, but final counters are read once: the kernel
    has deleted their elements, so dropping them would lose them for good. They go first,
    so a fresher row for the same element in ``newer`` wins at the broker.
    """
    have = {e.key for e in newer.elements}
    carried = [e for e in older.elements if e.final and e.key not in have]
    if not carried:
        return newer
    return bounded_report(newer.revision, newer.peers, [*carried, *newer.elements])


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BrokerSource:
    """A ``DesiredStateSource`` fed by the broker; also the run loop's reporter."""

    def __init__(
        self,
        state: StateDir,
        stop: threading.Event,
        connect: Callable[[], BrokerLink] | None = None,
        renew: Renewer = renew_in_child,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utcnow,
        rand: Callable[[], float] = random.random,
        wait_s: int = WAIT_S,
    ) -> None:
        self.state = state
        self.stop = stop
        self._connect = connect or (lambda: BrokerLink.from_state_dir(state))
        self._renew = renew
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self._wait_s = wait_s
        self.after = -1  # the revision of the newest document received
        self.rejected = False
        self._client: BrokerLink | None = None
        self._failures = 0
        self._renew_failures = 0
        self._next_renewal: datetime | None = None
        self._changed = threading.Condition()
        self._delivery: Delivery | None = None
        self._payload: AgentReport | None = None
        self._report_failures = 0

    # ------------------------------------------------------------------ run loop side
    def start(self) -> None:
        """Start the fetch and report threads (daemons: they die with the process)."""
        for target, name in ((self._fetch_loop, "ztb-fetch"), (self._report_loop, "ztb-report")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def poll(self, timeout: float) -> Delivery | None:
        """The newest document not handed out yet, waiting up to ``timeout`` seconds."""
        with self._changed:
            if self._delivery is None:
                self._changed.wait(timeout)
            delivery, self._delivery = self._delivery, None
        return delivery

    def report(self, payload: AgentReport) -> None:
        """Queue a report; only the newest waiting one is sent (with older final counters)."""
        with self._changed:
            waiting = self._payload
            self._payload = payload if waiting is None else carry_finals(waiting, payload)
            self._changed.notify_all()

    # ------------------------------------------------------------------- network side
    def fetch_once(self) -> float | None:
        """One long-poll round: seconds to wait before the next, None to stop fetching."""
        self._renew_if_due()
        if self.rejected:
            return None
        try:
            answer = self._client_now().fetch_state_timed(self.after, self._wait_s, self._clock)
        except CertificateRejected as exc:
            self._reject(str(exc))
            return None
        except (*_NETWORK_ERRORS, PolicyError) as exc:
            self._failures += 1
            delay = backoff_delay(self._failures - 1, self._rand)
            log_event(
                "broker_fetch_failed",
                error=exc,
                failures=self._failures,
                retry_in=round(delay, 1),
                enforcing_revision=self.after if self.after >= 0 else None,
            )
            return delay
        if self._failures:
            log_event("broker_reconnected", after_failures=self._failures)
            self._failures = 0
        if answer is not None:
            document, arrived = answer
            self.after = document.revision
            with self._changed:
                self._delivery = Delivery(document, arrived)
                self._changed.notify_all()
        return 0.0

    def send_report_once(self) -> float | None:
        """Send the waiting report, if any: seconds to wait before the next, None to stop."""
        with self._changed:
            payload, self._payload = self._payload, None
        if payload is None or self.rejected:
            return None if self.rejected else 0.0
        try:
            self._client_now().report(payload)
        except CertificateRejected as exc:
            self._reject(str(exc))
            return None
        except _NETWORK_ERRORS as exc:
            with self._changed:
                waiting = self._payload  # keep it, or its final counters if a newer one waits
                self._payload = payload if waiting is None else carry_finals(payload, waiting)
            self._report_failures += 1
            delay = backoff_delay(self._report_failures - 1, self._rand)
            log_event("broker_report_failed", error=exc, retry_in=round(delay, 1))
            return delay
        self._report_failures = 0
        return 0.0

    def _fetch_loop(self) -> None:
        while not self.stop.is_set():
            delay = self.fetch_once()
            if delay is None:
                return
            self.stop.wait(delay)

    def _report_loop(self) -> None:
        while not self.stop.is_set():
            with self._changed:
                if self._payload is None:
                    self._changed.wait(1.0)
            delay = self.send_report_once()
            if delay is None:
                return
            self.stop.wait(delay)

    def _client_now(self) -> BrokerLink:
        client = self._client
        if client is None:
            client = self._client = self._connect()
        return client

    def _reject(self, why: str) -> None:
        self.rejected = True
        log_event(
            "certificate_rejected",
            level="CRITICAL",
            error=why,
            action="stopped fetching desired state; the kernel keeps enforcing and grants "
            "expire on their own; run 'ztb agent enroll' with a new token",
        )

    def _renew_if_due(self) -> None:
        """Renew the certificate in a child once due; rebuild the client after success."""
        now = self._wall()
        if self._next_renewal is not None and now < self._next_renewal:
            return
        try:
            validity = self.state.read_validity()
        except StateError as exc:
            log_event("certificate_unreadable", level="ERROR", error=exc)
            self._next_renewal = now + _RENEW_RETRY
            return
        if now >= validity.not_after:
            self._reject(f"client certificate expired at {validity.not_after.isoformat()}")
            return
        if now < validity.renew_at:
            self._next_renewal = validity.renew_at
            return
        outcome = self._renew(self.state.path, self._renew_failures)
        self._renew_failures = 0 if outcome.renewed else outcome.failures
        self._next_renewal = None if outcome.renewed else outcome.next_attempt
        if outcome.error is not None:
            log_event(
                "certificate_renewal_failed",
                level=outcome.level,
                error=outcome.error,
                failures=outcome.failures,
                expires=validity.not_after.isoformat(),
                next_try=outcome.next_attempt.isoformat(),
            )
            return
        if not outcome.renewed:
            return  # the child saw it was not due yet (clocks a hair apart)
        log_event("certificate_renewed", renewed_at=now.isoformat())
        old, self._client = self._client, None
        if old is not None:
            old.close()
