"""A home's access policy and its evaluation: what may be asked for, and what needs no human.

Pure: the broker passes in who asks, what and for how long; the answer is a ``Decision`` or
a ``PolicyError`` with a user-facing message. Devices are named here (the broker resolves
names to addresses and checks that they exist).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError
from .grants import GrantSpec, PortRange, Proto, parse_proto
from .validation import DEFAULT_MAX_DURATION_S, HARD_MAX_DURATION_S, validate_duration

ANY_DEVICE = "*"
_MAX_RULES = 256


@dataclass(frozen=True, slots=True)
class GrantRule:
    """A pattern of grants: ``thermostat:tcp/443`` or ``*:tcp/80-443`` (any device)."""

    device: str
    proto: Proto
    ports: PortRange

    @classmethod
    def parse(cls, text: str) -> GrantRule:
        if not isinstance(text, str):
            raise PolicyError(f"grant rule must be a string, not {text!r}")
        if text.strip().startswith(ANY_DEVICE + ":"):
            proto, sep, ports = text.strip()[2:].partition("/")
            if not sep:
                raise PolicyError(f"grant rule must look like *:tcp/PORT[-PORT], not {text!r}")
            return cls(ANY_DEVICE, parse_proto(proto), PortRange.parse(ports))
        spec = GrantSpec.parse(text)
        return cls(spec.device, spec.proto, spec.ports)

    def covers(self, spec: GrantSpec) -> bool:
        return (
            self.device in (ANY_DEVICE, spec.device)
            and self.proto == spec.proto
            and self.ports.covers(spec.ports)
        )

    def __str__(self) -> str:
        return f"{self.device}:{self.proto}/{self.ports}"


@dataclass(frozen=True, slots=True)
class AutoApproveRule:
    """Requests that need no homeowner: by these technicians (empty: anyone allowed), only
    grants covered by ``grants``, and no longer than ``max_duration_s``."""

    grants: tuple[GrantRule, ...]
    technicians: tuple[str, ...] = ()
    max_duration_s: int = 900

    def matches(self, who: frozenset[str], specs: Sequence[GrantSpec], duration_s: int) -> bool:
        if self.technicians and not who.intersection(self.technicians):
            return False
        if duration_s > self.max_duration_s:
            return False
        return all(any(rule.covers(spec) for rule in self.grants) for spec in specs)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for an acceptable request; ``auto_rule`` is the index of the rule that
    approved it, or ``None`` when the homeowner must decide."""

    duration_s: int
    auto_rule: int | None = None

    @property
    def auto_approve(self) -> bool:
        return self.auto_rule is not None


@dataclass(frozen=True, slots=True)
class HomePolicy:
    """Per-home rules. Empty ``technicians``/``allowed`` mean any technician/any grant on a
    known device; every request still needs approval unless an auto-approve rule matches."""

    max_duration_s: int = DEFAULT_MAX_DURATION_S
    technicians: tuple[str, ...] = ()
    allowed: tuple[GrantRule, ...] = ()
    auto_approve: tuple[AutoApproveRule, ...] = field(default=())

    def __post_init__(self) -> None:
        validate_duration(self.max_duration_s, HARD_MAX_DURATION_S)
        if len(self.allowed) > _MAX_RULES or len(self.auto_approve) > _MAX_RULES:
            raise PolicyError(f"a policy may hold at most {_MAX_RULES} rules per list")
        for rule in self.auto_approve:
            validate_duration(rule.max_duration_s, self.max_duration_s)
            if not rule.grants:
                raise PolicyError("an auto-approve rule needs at least one grant rule")

    def admits(self, who: Iterable[str]) -> bool:
        """May this technician (any of their identifiers: id, email) ask at all?"""
        return not self.technicians or bool(set(who).intersection(self.technicians))

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_duration_s": self.max_duration_s,
            "technicians": list(self.technicians),
            "allowed": [str(rule) for rule in self.allowed],
            "auto_approve": [
                {
                    "technicians": list(rule.technicians),
                    "grants": [str(g) for g in rule.grants],
                    "max_duration_s": rule.max_duration_s,
                }
                for rule in self.auto_approve
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> HomePolicy:
        if not isinstance(data, dict):
            raise PolicyError("policy must be a JSON object")
        unknown = set(data) - {"max_duration_s", "technicians", "allowed", "auto_approve"}
        if unknown:
            raise PolicyError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
        auto = [_auto_rule(item) for item in _list(data, "auto_approve")]
        return cls(
            max_duration_s=data.get("max_duration_s", DEFAULT_MAX_DURATION_S),
            technicians=tuple(_strings(_list(data, "technicians"), "technicians")),
            allowed=tuple(GrantRule.parse(text) for text in _list(data, "allowed")),
            auto_approve=tuple(auto),
        )


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise PolicyError(f"policy field {key} must be a list")
    return value


def _strings(values: list[Any], key: str) -> list[str]:
    if not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"policy field {key} must hold non-empty strings")
    return values


def _auto_rule(item: Any) -> AutoApproveRule:
    if not isinstance(item, dict):
        raise PolicyError("an auto-approve rule must be a JSON object")
    return AutoApproveRule(
        grants=tuple(GrantRule.parse(text) for text in _list(item, "grants")),
        technicians=tuple(_strings(_list(item, "technicians"), "technicians")),
        max_duration_s=item.get("max_duration_s", 900),
    )


def evaluate(
    policy: HomePolicy, who: Iterable[str], specs: Sequence[GrantSpec], duration_s: int
) -> Decision:
    """Check a request (or an escalation) against the policy.

    Raises ``PolicyError`` naming the first thing that is not allowed.
    """
    identities = frozenset(who)
    if not policy.admits(identities):
        raise PolicyError("this technician may not request access to this home")
    if not specs:
        raise PolicyError("a request needs at least one grant")
    validate_duration(duration_s, policy.max_duration_s)
    if policy.allowed:
        for spec in specs:
            if not any(rule.covers(spec) for rule in policy.allowed):
                raise PolicyError(f"grant {spec} is not allowed by this home's policy")
    for index, rule in enumerate(policy.auto_approve):
        if rule.matches(identities, specs, duration_s):
            return Decision(duration_s=duration_s, auto_rule=index)
    return Decision(duration_s=duration_s)
