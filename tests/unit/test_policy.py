"""Home policy: caps, allowed grants, who may ask, and auto-approval."""

from __future__ import annotations

from typing import Any

import pytest

from netpolicy import GrantSpec, PolicyError
from netpolicy.policy import GrantRule, HomePolicy, evaluate

TECH = ("usr_a", "alice@example.com")


def specs(*texts: str) -> list[GrantSpec]:
    return [GrantSpec.parse(t) for t in texts]


def test_default_policy_caps_at_one_hour_and_needs_a_human() -> None:
    policy = HomePolicy()
    assert evaluate(policy, TECH, specs("tv:tcp/443"), 3600).auto_approve is False
    with pytest.raises(PolicyError, match="cap of 3600s"):
        evaluate(policy, TECH, specs("tv:tcp/443"), 3601)


@pytest.mark.parametrize("duration", [0, -5, 8 * 3600 + 1])
def test_bad_durations_are_refused(duration: int) -> None:
    with pytest.raises(PolicyError):
        evaluate(HomePolicy(max_duration_s=8 * 3600), TECH, specs("tv:tcp/443"), duration)


def test_hard_cap_cannot_be_raised() -> None:
    with pytest.raises(PolicyError, match="cap"):
        HomePolicy(max_duration_s=8 * 3600 + 1)
    assert HomePolicy(max_duration_s=8 * 3600).max_duration_s == 8 * 3600


def test_allowed_rules_limit_devices_and_ports() -> None:
    policy = HomePolicy.from_dict({"allowed": ["thermostat:tcp/443", "*:tcp/80"]})
    evaluate(policy, TECH, specs("thermostat:tcp/443", "tv:tcp/80"), 60)
    with pytest.raises(PolicyError, match="thermostat:tcp/22 is not allowed"):
        evaluate(policy, TECH, specs("thermostat:tcp/22"), 60)
    with pytest.raises(PolicyError, match="not allowed"):
        evaluate(policy, TECH, specs("thermostat:tcp/443-444"), 60)
    with pytest.raises(PolicyError, match="not allowed"):
        evaluate(policy, TECH, specs("thermostat:udp/443"), 60)


def test_only_listed_technicians_may_ask() -> None:
    policy = HomePolicy(technicians=("bob@example.com",))
    with pytest.raises(PolicyError, match="may not request"):
        evaluate(policy, TECH, specs("tv:tcp/443"), 60)
    evaluate(policy, ("usr_b", "bob@example.com"), specs("tv:tcp/443"), 60)


def test_auto_approve_needs_named_technician_low_risk_grants_and_short_duration() -> None:
    policy = HomePolicy.from_dict(
        {
            "auto_approve": [
                {
                    "technicians": ["alice@example.com"],
                    "grants": ["tv:tcp/443"],
                    "max_duration_s": 600,
                }
            ]
        }
    )
    assert evaluate(policy, TECH, specs("tv:tcp/443"), 600).auto_rule == 0
    assert not evaluate(policy, TECH, specs("tv:tcp/443"), 601).auto_approve
    assert not evaluate(policy, TECH, specs("tv:tcp/443", "tv:tcp/22"), 60).auto_approve
    assert not evaluate(policy, ("usr_b", "bob@x"), specs("tv:tcp/443"), 60).auto_approve


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"max_duration_s": "1h"},
        {"max_duration_s": 0},
        {"allowed": "tv:tcp/443"},
        {"allowed": ["tv:tcp/0"]},
        {"allowed": ["*:icmp/1"]},
        {"technicians": [""]},
        {"auto_approve": [{"grants": []}]},
        {"auto_approve": [{"grants": ["tv:tcp/1"], "max_duration_s": 7200}]},
        {"surprise": True},
    ],
)
def test_bad_policy_documents_are_refused(data: Any) -> None:
    with pytest.raises(PolicyError):
        HomePolicy.from_dict(data)


def test_policy_round_trips() -> None:
    data = {
        "max_duration_s": 7200,
        "technicians": ["a@x"],
        "allowed": ["*:tcp/80-443", "tv:udp/5353"],
        "auto_approve": [{"technicians": [], "grants": ["tv:tcp/443"], "max_duration_s": 300}],
    }
    assert HomePolicy.from_dict(data).to_dict() == data
    assert str(GrantRule.parse("*:tcp/80-443")) == "*:tcp/80-443"
