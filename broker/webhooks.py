"""Outgoing homeowner webhooks: HMAC-SHA256-signed JSON, delivered in the background.

Deliveries queue only after the change is committed, one lane per home: a home's
deliveries go out in order, one at a time, while different homes' lanes run side by side
on worker threads (one more whenever every worker is busy, up to ``max_workers``). Each
attempt has short timeouts (connect 3 s, each read or write 5 s) and a failed attempt
waits for its retry *off* the workers (a timer puts the lane back), so a home whose target
accepts and never answers delays only its own notifications. Every attempt re-checks the
target and connects to the address it checked (``broker.webhook_targets``).

The receiver checks ``X-Ztb-Signature: sha256=<hex HMAC of the raw body with the home's
webhook secret>``. The lanes live in memory; ``send``/``drain``/``close`` are the whole
interface, so a durable queue can replace them without touching the callers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx

from .metrics import Metrics
from .webhook_targets import TargetRefused, WebhookTargets

log = logging.getLogger("ztb.broker.webhooks")
SIGNATURE_HEADER = "X-Ztb-Signature"
# Per attempt: connecting, and each read or write, must finish in these (seconds).
TIMEOUTS = httpx.Timeout(5.0, connect=3.0, pool=1.0)
MAX_QUEUED = 10_000


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Delivery:
    home_id: str
    url: str
    secret: str
    event: str
    payload: dict[str, Any]


@dataclass(slots=True)
class _Pending:
    delivery: Delivery
    attempt: int = 0


class WebhookSender:
    def __init__(
        self,
        metrics: Metrics,
        targets: WebhookTargets | None = None,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_workers: int = 32,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.targets = targets or WebhookTargets()
        self._metrics = metrics
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_workers = max_workers
        self._active = 0  # lanes ready or being worked on: more than workers starts one
        self._transport = transport
        self._lanes: dict[str, deque[_Pending]] = {}
        self._ready: queue.Queue[str | None] = queue.Queue()
        self._queued = 0  # deliveries not yet finished, over all lanes
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def send(self, delivery: Delivery) -> None:
        with self._lock:
            if self._queued >= MAX_QUEUED or self._stopping.is_set():
                self._metrics.webhooks.labels("dropped").inc()
                log.warning("webhook queue full; dropped", extra={"event": delivery.event})
                return
            self._queued += 1
            lane = self._lanes.get(delivery.home_id)
            if lane is None:  # idle home: its lane becomes ready now
                self._lanes[delivery.home_id] = deque([_Pending(delivery)])
                self._make_ready(delivery.home_id)
            else:  # the lane is being worked on or waits for a retry: join its end
                lane.append(_Pending(delivery))

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued delivery has finished (tests, shutdown)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._queued == 0, timeout_s)

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._ready.put(None)
        for thread in threads:
            thread.join(timeout=5)

    def _make_ready(self, home_id: str) -> None:
        """Queue a lane for a worker (under the lock); start one more if all are busy."""
        self._active += 1
        self._ready.put(home_id)
        if self._active > len(self._threads) and len(self._threads) < self._max_workers:
            name = f"ztb-webhooks-{len(self._threads)}"
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self) -> None:
        # No kept-alive connections: one made for host A (its certificate checked for A)
        # must not carry host B's delivery just because both resolve to the same address.
        with httpx.Client(
            transport=self._transport,
            timeout=TIMEOUTS,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            while (home_id := self._ready.get()) is not None:
                with self._lock:
                    pending = self._lanes[home_id][0]
                pending.attempt += 1
                outcome = self._attempt(client, pending)
                self._after_attempt(home_id, pending, outcome)

    def _after_attempt(self, home_id: str, pending: _Pending, outcome: str | None) -> None:
        """Finish the delivery or schedule its retry; hand the lane on either way."""
        retry = outcome is None and pending.attempt < self._attempts
        with self._lock:
            self._active -= 1
            lane = self._lanes[home_id]
            if not retry:
                lane.popleft()
                self._metrics.webhooks.labels(outcome or "failed").inc()
                self._queued -= 1
                self._lock.notify_all()
                if lane:
                    self._make_ready(home_id)
                else:
                    del self._lanes[home_id]
                return
        delay = self._backoff_s * 2 ** (pending.attempt - 1)
        timer = threading.Timer(delay, self._retry_due, args=(home_id,))
        timer.daemon = True
        timer.start()

    def _retry_due(self, home_id: str) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self._make_ready(home_id)

    def _attempt(self, client: httpx.Client, pending: _Pending) -> str | None:
        """One try: "delivered", "refused" (target not allowed: no retry) or None (failed)."""
        delivery = pending.delivery
        try:
            target = self.targets.check(delivery.url)
        except TargetRefused as refusal:
            log.warning(
                "webhook target refused", extra={"event": delivery.event, "why": str(refusal)}
            )
            return "refused"
        body = json.dumps(delivery.payload, sort_keys=True).encode()
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "X-Ztb-Event": delivery.event,
            SIGNATURE_HEADER: signature(delivery.secret, body),
        }
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        try:
            request = client.build_request(
                "POST", target.url, content=body, headers=headers, extensions=extensions
            )
            response = client.send(request)
            if response.status_code < 300:
                return "delivered"
            problem = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        log.info(
            "webhook attempt failed",
            extra={"event": delivery.event, "attempt": pending.attempt, "problem": problem},
        )
        return None
