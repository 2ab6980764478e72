"""API errors: one readable sentence in ``{"detail": ...}``, plus an audit note for denials."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused attempt worth recording in the audit chain."""

    actor: str
    action: str
    object: str
    reason: str


class ApiError(Exception):
    def __init__(self, status: int, detail: str, denial: Denial | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.denial = denial


def denied(status: int, detail: str, actor: str, action: str, obj: str) -> ApiError:
    """A refusal on an object that exists: the caller sees ``detail``, the chain sees why."""
    return ApiError(status, detail, Denial(actor, action, obj, detail))
