"""Session-wide fixtures behind ``broker_harness.harness``: the built-once worlds and the
throwaway PostgreSQL cluster (test modules import only ``harness`` itself)."""

from __future__ import annotations

from .broker_harness import postgres_template, sqlite_template
from .postgres_server import postgres_server

__all__ = ["postgres_server", "postgres_template", "sqlite_template"]
