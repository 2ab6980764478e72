"""The broker's running parts, and the unit of work every change goes through.

A ``UnitOfWork`` is one database transaction plus what must happen only after it commits
(waking agents, sending webhooks). Audit events are appended inside the transaction, so a
change and its audit event are stored together or not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import audit
from .clock import Clock
from .config import Settings
from .db.engine import read_engine, read_session_factory
from .errors import Denial
from .metrics import Metrics
from .notifier import Notifier
from .pki import CertificateAuthority
from .state_cache import DesiredStates, LastSeen
from .webhooks import Delivery, WebhookSender

T = TypeVar("T")
SessionFactory = sessionmaker[Session]
RETRIES = 5
WRITER_WAIT_S = 30.0


@dataclass
class Broker:
    settings: Settings
    engine: Engine
    sessionmaker: sessionmaker[Session]
    clock: Clock
    notifier: Notifier
    webhooks: WebhookSender
    signer: audit.Signer
    metrics: Metrics
    ca: CertificateAuthority | None = None  # signs agent certificates; None before bootstrap
    desired_states: DesiredStates = field(default_factory=DesiredStates)
    last_seen: LastSeen = field(default_factory=LastSeen)

    @cached_property
    def read_sessionmaker(self) -> SessionFactory:
        return read_session_factory(self.engine)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction: never takes the SQLite write lock, never writes."""
        with self.read_sessionmaker() as db, db.begin():
            yield db

    @cached_property
    def _read_engine(self) -> Engine:
        return read_engine(self.engine)

    @contextmanager
    def read_rows(self) -> Iterator[Connection]:
        """``read`` without the ORM, for the lookups every request makes (token, expiry):
        a plain connection costs a fraction of a ``Session``."""
        with self._read_engine.connect() as connection, connection.begin():
            yield connection

    @cached_property
    def _sqlite_writer(self) -> threading.Lock | None:
        return threading.Lock() if self.engine.dialect.name == "sqlite" else None

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """SQLite has one writer at a time. This process's writers queue on a lock, in
        order and at once, instead of in SQLite's busy handler, which polls with sleeps
        growing to 100 ms (p99 latency of seconds under load). Other processes still meet
        at the database lock (``BEGIN IMMEDIATE`` + ``busy_timeout``)."""
        lock = self._sqlite_writer
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=WRITER_WAIT_S):
            raise TimeoutError(f"no database write slot within {WRITER_WAIT_S}s")
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        with self._one_writer(), self.sessionmaker() as db:
            uow = UnitOfWork(self, db, self.clock())
            try:
                yield uow
                db.commit()
            except BaseException:
                db.rollback()
                raise
        uow.after_commit()

    def run(self, work: Callable[[UnitOfWork], T]) -> T:
        """Run ``work`` in a fresh transaction, again on a lost race (unique constraint)."""
        for attempt in range(RETRIES):
            try:
                with self.unit_of_work() as uow:
                    return work(uow)
            except IntegrityError:
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def record_denial(self, denial: Denial) -> None:
        with self.unit_of_work() as uow:
            details = {"attempt": denial.action, "reason": denial.reason}
            uow.audit(denial.actor, "denied", denial.object, details)


@dataclass
class UnitOfWork:
    broker: Broker
    db: Session
    now: datetime
    _homes_to_wake: set[str] = field(default_factory=set)
    _deliveries: list[Delivery] = field(default_factory=list)
    _states: list[str] = field(default_factory=list)
    _audit_kinds: list[str] = field(default_factory=list)

    def audit(self, actor: str, action: str, obj: str, details: dict[str, Any]) -> None:
        audit.append(self.db, self.now, actor, action, obj, details)
        self._audit_kinds.append("denied" if action == "denied" else "change")

    def wake_agents(self, home_id: str) -> None:
        self._homes_to_wake.add(home_id)

    def webhook(self, delivery: Delivery) -> None:
        self._deliveries.append(delivery)

    def transition(self, state: str) -> None:
        """Count a session state change (or end reason) in the metrics once committed."""
        self._states.append(state)

    def after_commit(self) -> None:
        for home_id in self._homes_to_wake:
            self.broker.notifier.notify(home_id)
        for delivery in self._deliveries:
            self.broker.webhooks.send(delivery)
        metrics = self.broker.metrics
        for state in self._states:
            metrics.transitions.labels(state).inc()
        for kind in self._audit_kinds:
            metrics.audit_events.labels(kind).inc()
