"""Wake long-polls in every replica: PostgreSQL ``NOTIFY`` on a revision bump, one
``LISTEN`` connection per broker process.

Each process keeps its own ``InProcessNotifier`` for the waiters on its event loop; a
thread holds a dedicated autocommit connection on ``LISTEN`` and fires local waiters for
every notification, including this process's own. ``notify`` also wakes local waiters
directly, so a dropped listener connection delays only other replicas (until it is back,
or until their long-polls time out and the agents poll again).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy import Engine, text

from .notifier import InProcessNotifier

CHANNEL = "ztb_home_revision"
LISTEN_READY_TIMEOUT_S = 10.0
POLL_S = 0.5  # how often the listener checks whether it should stop
RECONNECT_S = 1.0
_NOTIFY = text("SELECT pg_notify(:channel, :home)")

log = logging.getLogger("ztb.broker.notifier")


class PostgresNotifier:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = InProcessNotifier()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def subscribe(self, home_id: str) -> asyncio.Event:
        self._ensure_listening()
        return self._local.subscribe(home_id)

    def notify(self, home_id: str) -> None:
        """Called after the commit that bumped the revision."""
        self._local.notify(home_id)
        with self._engine.connect() as connection:
            connection.execute(_NOTIFY, {"channel": CHANNEL, "home": home_id})
            connection.commit()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=POLL_S * 4)

    def _ensure_listening(self) -> None:
        """Before the first waiter reads its revision, so no change slips between."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen_until_closed, name="ztb-pg-listen", daemon=True
                )
                self._thread.start()
        if not self._listening.wait(LISTEN_READY_TIMEOUT_S):
            raise TimeoutError(f"PostgreSQL LISTEN not ready within {LISTEN_READY_TIMEOUT_S}s")

    def _listen_until_closed(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen_once()
            except Exception:
                self._listening.clear()
                if self._stop.is_set():
                    return
                log.exception("PostgreSQL LISTEN connection failed; reconnecting")
                self._stop.wait(RECONNECT_S)

    def _listen_once(self) -> None:
        import psycopg  # the broker's PostgreSQL driver; only this notifier uses it directly

        # Its own connection, outside the pool: it stays on LISTEN for the process's life.
        url = self._engine.url.set(drivername="postgresql")
        connection = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        try:
            connection.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            while not self._stop.is_set():
                for note in connection.notifies(timeout=POLL_S):
                    self._local.notify(note.payload)
        finally:
            connection.close()
