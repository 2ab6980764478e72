"""Outgoing homeowner webhooks: HMAC-SHA256-signed JSON, delivered in the background.

A worker thread drains a queue so requests never wait on someone else's web server; each
delivery gets a bounded number of attempts with growing pauses. Deliveries queue only after
the change is committed. The receiver checks ``X-Ztb-Signature: sha256=<hex HMAC of the
raw body with the home's webhook secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from .metrics import Metrics

log = logging.getLogger("ztb.broker.webhooks")
SIGNATURE_HEADER = "X-Ztb-Signature"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Delivery:
    url: str
    secret: str
    event: str
    payload: dict[str, Any]


class WebhookSender:
    def __init__(
        self,
        metrics: Metrics,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._queue: queue.Queue[Delivery | None] = queue.Queue(maxsize=10_000)
        self._metrics = metrics
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._transport = transport
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def send(self, delivery: Delivery) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ztb-webhooks", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            self._metrics.webhooks.labels("dropped").inc()
            log.warning("webhook queue full; dropped", extra={"event": delivery.event})

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued delivery has finished (tests, shutdown)."""
        done = threading.Event()

        def wait_for_queue() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait_for_queue, daemon=True).start()
        return done.wait(timeout_s)

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(transport=self._transport, timeout=5.0) as client:
            while True:
                delivery = self._queue.get()
                try:
                    if delivery is None:
                        return
                    self._deliver(client, delivery)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        body = json.dumps(delivery.payload, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Ztb-Event": delivery.event,
            SIGNATURE_HEADER: signature(delivery.secret, body),
        }
        for attempt in range(1, self._attempts + 1):
            try:
                response = client.post(delivery.url, content=body, headers=headers)
                if response.status_code < 300:
                    self._metrics.webhooks.labels("delivered").inc()
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            log.info(
                "webhook attempt failed",
                extra={"event": delivery.event, "attempt": attempt, "problem": problem},
            )
            if attempt < self._attempts and self._stopping.wait(
                self._backoff_s * 2 ** (attempt - 1)
            ):
                break
        self._metrics.webhooks.labels("failed").inc()
