"""The agent's main loop: poll the source, apply, end expired sessions, report status.

Kept apart from the CLI so any ``DesiredStateSource`` (file today, broker long-poll next)
drives the same loop. Every loop iteration is bounded by the poll interval; a failed
apply is retried after a back-off, and a bad document never replaces the last good one.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from netpolicy import DesiredState, PolicyError

from .desired_file import DesiredStateSource
from .events import log_event
from .nft_backend import NftError
from .reconcile import Agent, Clock
from .wg_backend import WireGuardError

_RETRY_S = 1.0
_APPLY_ERRORS = (NftError, WireGuardError, OSError, subprocess.TimeoutExpired)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one (tmp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


class Runner:
    def __init__(
        self,
        agent: Agent,
        source: DesiredStateSource,
        stop: threading.Event,
        status_file: Path | None = None,
        poll_interval: float = 0.2,
        resync_interval: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.agent = agent
        self.source = source
        self.stop = stop
        self.status_file = status_file
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self._clock = clock
        self._document: DesiredState | None = None
        self._received = 0.0
        self._dirty = False
        self._retry_at = 0.0
        self._last_apply = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
        log_event("stop", revision=self.agent.desired.revision if self.agent.desired else None)

    def _wait(self, now: float) -> float:
        wait = self.poll_interval
        expiry = self.agent.next_expiry()
        if expiry is not None:
            wait = min(wait, max(0.0, expiry - now))
        return wait

    def step(self) -> None:
        try:
            document = self.source.poll(self._wait(self._clock()))
        except PolicyError as exc:
            kept = self.agent.desired.revision if self.agent.desired else None
            log_event("bad_desired_state", error=str(exc), enforcing_revision=kept)
            document = None
        if self.stop.is_set():
            return
        now = self._clock()
        if document is not None:
            self._document, self._received, self._dirty = document, now, True
            log_event("desired_state", revision=document.revision, sessions=len(document.sessions))
        reason = self._due(now)
        if reason is not None:
            self._apply(reason, now)

    def _due(self, now: float) -> str | None:
        if self._document is None or now < self._retry_at:
            return None
        if self._dirty:
            return "document"
        expiry = self.agent.next_expiry()
        if expiry is not None and now >= expiry:
            return "expiry"
        if now - self._last_apply >= self.resync_interval:
            return "resync"
        return None

    def _apply(self, reason: str, now: float) -> None:
        assert self._document is not None
        started = time.perf_counter()
        try:
            result = self.agent.apply(self._document, self._received)
        except _APPLY_ERRORS as exc:
            self._retry_at = now + max(_RETRY_S, self.poll_interval)
            log_event("apply_failed", reason=reason, revision=self._document.revision, error=exc)
            return
        self._dirty, self._last_apply = False, now
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
        self.write_status()

    def write_status(self) -> None:
        if self.status_file is None:
            return
        try:
            status = self.agent.report()
            status.update(applied_at=time.time(), pid=os.getpid())
            write_json_atomically(self.status_file, status)
        except _APPLY_ERRORS as exc:
            log_event("status_failed", error=exc)
