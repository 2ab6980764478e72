"""Prometheus metrics, one registry per app so several apps (tests) never clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ztb_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ztb_http_request_seconds",
            "HTTP request latency (long-polls included)",
            ["route"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "ztb_session_transitions_total",
            "Session state changes",
            ["to"],
            registry=self.registry,
        )
        self.audit_events = Counter(
            "ztb_audit_events_total", "Audit events appended", ["kind"], registry=self.registry
        )
        self.webhooks = Counter(
            "ztb_webhook_deliveries_total",
            "Webhook deliveries by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.longpolls = Gauge(
            "ztb_agent_longpolls_waiting", "Agent long-polls now waiting", registry=self.registry
        )
