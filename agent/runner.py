"""The agent's main loop: poll the source, apply, end expired sessions, report status.

Kept apart from the CLI so any ``DesiredStateSource`` (the file, or the broker long-poll)
drives the same loop. Every loop iteration is bounded by the poll interval; a failed
apply is retried after a back-off, and a bad document never replaces the last good one.

Applies trust the agent's model of the kernel; the kernel itself is read only on the
resync (every ``resync_interval``, which also repairs drift) and for the report (every
``report_interval``, the only reader of all per-element counters and peer handshakes).

The counters of a session that leaves (revoke, expiry) are read just before its elements go
and are reported at once, not at the next report interval, so the homeowner's report is
complete within a second or two of the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netpolicy import AgentReport, DesiredState, PolicyError
from ztb.files import write_atomic

from .desired_file import DesiredStateSource
from .events import log_event
from .nftables.backend import NftError
from .reconcile import Clock, Reconciler
from .status import bounded_report
from .wireguard.backend import WireGuardError

_RETRY_S = 1.0
_APPLY_ERRORS = (NftError, WireGuardError, OSError, subprocess.TimeoutExpired)
# Receives the revision alone after each new document (enough to say "applied") or with the
# final counters of sessions that just left, and every report interval the kernel's counters.
Reporter = Callable[[AgentReport], None]


class Runner:
    def __init__(
        self,
        reconciler: Reconciler,
        source: DesiredStateSource,
        stop: threading.Event,
        status_file: Path | None = None,
        poll_interval: float = 0.2,
        resync_interval: float = 30.0,
        clock: Clock = time.monotonic,
        reporter: Reporter | None = None,
        report_interval: float = 30.0,
    ) -> None:
        self.reconciler = reconciler
        self.source = source
        self.stop = stop
        self.status_file = status_file
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.reporter = reporter
        self.report_interval = report_interval
        self._clock = clock
        self._document: DesiredState | None = None
        self._received = 0.0
        self._dirty = False
        self._retry_at = 0.0
        self._last_apply = 0.0
        self._last_report: float | None = None
        self._applied_at = 0.0  # wall clock of the last successful apply, for the status

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
        log_event(
            "stop", revision=self.reconciler.desired.revision if self.reconciler.desired else None
        )

    def _wait(self, now: float) -> float:
        wait = self.poll_interval
        for timer in (self.reconciler.next_expiry(), self.reconciler.next_counter_read()):
            if timer is not None:
                wait = min(wait, max(0.0, timer - now))
        return wait

    def step(self) -> None:
        try:
            delivery = self.source.poll(self._wait(self._clock()))
        except PolicyError as exc:
            kept = self.reconciler.desired.revision if self.reconciler.desired else None
            log_event("bad_desired_state", error=str(exc), enforcing_revision=kept)
            delivery = None
        if self.stop.is_set():
            return
        now = self._clock()
        if delivery is not None:
            document = delivery.document
            self._document, self._received, self._dirty = document, delivery.received_at, True
            log_event("desired_state", revision=document.revision, sessions=len(document.sessions))
        reason = self._due(now)
        if reason is not None:
            self._apply(reason, now)
        if self.reconciler.read_expiring_counters():  # only when one is due
            self._report_finals(always=False)
        if self._report_due(now):
            self.report(now)

    def _due(self, now: float) -> str | None:
        if self._document is None or now < self._retry_at:
            return None
        if self._dirty:
            return "document"
        expiry = self.reconciler.next_expiry()
        if expiry is not None and now >= expiry:
            return "expiry"
        if now - self._last_apply >= self.resync_interval:
            return "resync"
        return None

    def _apply(self, reason: str, now: float) -> None:
        assert self._document is not None
        started = time.perf_counter()
        try:
            result = self.reconciler.apply(
                self._document, self._received, relist=reason == "resync"
            )
        except _APPLY_ERRORS as exc:
            self._retry_at = now + max(_RETRY_S, self.poll_interval)
            log_event("apply_failed", reason=reason, revision=self._document.revision, error=exc)
            return
        self._dirty, self._last_apply, self._applied_at = False, now, time.time()
        if result.changed or reason != "resync":
            log_event(
                "applied",
                reason=reason,
                revision=result.revision,
                elements_added=result.elements_added,
                elements_deleted=result.elements_deleted,
                peers_set=result.peers_set,
                peers_removed=result.peers_removed,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        if self.status_file is not None:
            self._write_status(self.reconciler.status())
        # A new document gets "applied" (building every row here would cost O(live grants)
        # per apply); the final counters of sessions that just left go with it.
        self._report_finals(always=reason == "document")

    def _report_finals(self, always: bool) -> None:
        """Report the revision with the final counters read since the last call, if any."""
        finals = self.reconciler.take_final_counters()
        desired = self.reconciler.desired
        if self.reporter is not None and desired is not None and (always or finals):
            self.reporter(bounded_report(desired.revision, elements=finals))

    def _report_due(self, now: float) -> bool:
        if self.reconciler.desired is None:
            return False
        return self._last_report is None or now - self._last_report >= self.report_interval

    def report(self, now: float) -> None:
        """Read the kernel's counters and handshakes: status file and reporter."""
        self._last_report = now
        try:
            reading = self.reconciler.report()
        except _APPLY_ERRORS as exc:
            log_event("report_failed", error=exc)
            return
        self._write_status(reading.status)
        if self.reporter is not None and reading.report is not None:
            self.reporter(reading.report)

    def _write_status(self, status: dict[str, Any]) -> None:
        if self.status_file is None:
            return
        try:
            extra = {"applied_at": self._applied_at, "pid": os.getpid()}
            status_json = json.dumps({**status, **extra}, indent=1, sort_keys=True)
            write_atomic(self.status_file, status_json, 0o644, durable=False)
        except OSError as exc:
            log_event("status_failed", error=exc)
