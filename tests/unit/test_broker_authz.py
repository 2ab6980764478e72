"""Authorization matrix: every route x every role x own/foreign object.

"Own" is the caller's side of the world (home A, technician A's sessions, the caller's own
user and tokens); "foreign" is the other side (home B, technician B). Foreign objects must
answer exactly like missing ones (404), and no response may carry data of the other side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .broker_harness import Harness, World, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio

_counter = itertools.count(100)


@dataclass
class Side:
    """The objects of one side of the world, made fresh for each case that changes them."""

    home: str
    home_name: str
    owner: str  # owner's token
    owner_id: str
    tech: str  # technician's token
    device_ip_prefix: str
    device: str
    admin: str  # the admin's token: enrolls agents


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str  # may use {home} {session} {device} {user} {token} {agent}
    needs: str  # "", "requested", "approved", "device", "token", "agent"
    expect: dict[str, tuple[int, int]]  # role -> (own, foreign)
    body: Callable[[Side], Any] | None = None


def same(status: int) -> tuple[int, int]:
    return (status, status)


ALL_200 = {"admin": same(200), "homeowner": same(200), "technician": same(200)}
ADMIN_ONLY = {"admin": same(200), "homeowner": same(403), "technician": same(403)}
OWNER_READ = {"admin": same(200), "homeowner": (200, 404), "technician": same(404)}


def device_body(side: Side) -> dict[str, str]:
    n = next(_counter)
    return {"name": f"dev{n}", "ip": f"{side.device_ip_prefix}{n}"}


CASES = [
    Case("me", "GET", "/v1/me", "", ALL_200),
    Case("list users", "GET", "/v1/users", "", ADMIN_ONLY),
    Case(
        "create user",
        "POST",
        "/v1/users",
        "",
        {"admin": same(201), "homeowner": same(403), "technician": same(403)},
        lambda s: {"email": f"u{next(_counter)}@example.com", "role": "technician"},
    ),
    Case(
        "create token",
        "POST",
        "/v1/users/{user}/tokens",
        "",
        {"admin": same(201), "homeowner": (201, 404), "technician": (201, 404)},
        lambda s: {},
    ),
    Case("list tokens", "GET", "/v1/tokens", "", ALL_200),
    Case(
        "revoke token",
        "DELETE",
        "/v1/tokens/{token}",
        "token",
        {"admin": same(204), "homeowner": (204, 404), "technician": (204, 404)},
    ),
    Case(
        "create home",
        "POST",
        "/v1/homes",
        "",
        {"admin": same(201), "homeowner": same(403), "technician": same(403)},
        lambda s: {"name": f"h{next(_counter)}", "owner": s.owner_id, "lan": "172.16.9.0/24"},
    ),
    Case("list homes", "GET", "/v1/homes", "", ALL_200),
    Case("read home", "GET", "/v1/homes/{home}", "", OWNER_READ),
    Case("patch home", "PATCH", "/v1/homes/{home}", "", OWNER_READ, lambda s: {}),
    Case(
        "set policy",
        "PUT",
        "/v1/homes/{home}/policy",
        "",
        OWNER_READ,
        lambda s: {
            "technicians": ["tina@example.com" if s.home_name == "ann-house" else "tom@example.com"]
        },
    ),
    Case(
        "enroll token",
        "POST",
        "/v1/homes/{home}/enroll-token",
        "",
        {"admin": same(201), "homeowner": (403, 404), "technician": same(404)},
        lambda s: {},
    ),
    Case(
        "revoke agent",
        "POST",
        "/v1/homes/{home}/agents/{agent}/revoke",
        "agent",
        {"admin": same(200), "homeowner": (403, 404), "technician": same(404)},
    ),
    Case(
        "add device",
        "POST",
        "/v1/homes/{home}/devices",
        "",
        {"admin": same(201), "homeowner": (201, 404), "technician": same(404)},
        device_body,
    ),
    Case(
        "list devices",
        "GET",
        "/v1/homes/{home}/devices",
        "",
        {"admin": same(200), "homeowner": (200, 404), "technician": (200, 404)},
    ),
    Case(
        "patch device",
        "PATCH",
        "/v1/homes/{home}/devices/{device}",
        "device",
        OWNER_READ,
        lambda s: {},
    ),
    Case(
        "delete device",
        "DELETE",
        "/v1/homes/{home}/devices/{device}",
        "device",
        {"admin": same(204), "homeowner": (204, 404), "technician": same(404)},
    ),
    Case(
        "request session",
        "POST",
        "/v1/sessions",
        "",
        {"admin": same(403), "homeowner": same(403), "technician": (201, 404)},
        lambda s: {
            "home": s.home,
            "grants": [f"{s.device}:tcp/443"],
            "duration_s": 60,
            "reason": "r",
        },
    ),
    Case("list sessions", "GET", "/v1/sessions", "", ALL_200),
    Case(
        "list sessions of a home",
        "GET",
        "/v1/sessions?home={home}",
        "",
        {"admin": same(200), "homeowner": (200, 404), "technician": (200, 404)},
    ),
    Case(
        "read session",
        "GET",
        "/v1/sessions/{session}",
        "requested",
        {"admin": same(200), "homeowner": (200, 404), "technician": (200, 404)},
    ),
    Case(
        "approve",
        "POST",
        "/v1/sessions/{session}/approve",
        "requested",
        {"admin": same(200), "homeowner": (200, 404), "technician": (403, 404)},
        lambda s: {},
    ),
    Case(
        "deny",
        "POST",
        "/v1/sessions/{session}/deny",
        "requested",
        {"admin": same(200), "homeowner": (200, 404), "technician": (403, 404)},
        lambda s: {},
    ),
    Case(
        "revoke",
        "POST",
        "/v1/sessions/{session}/revoke",
        "approved",
        {"admin": same(200), "homeowner": (200, 404), "technician": (200, 404)},
        lambda s: {},
    ),
    Case(
        "cancel",
        "POST",
        "/v1/sessions/{session}/cancel",
        "requested",
        {"admin": same(403), "homeowner": (403, 404), "technician": (200, 404)},
    ),
    Case(
        "escalate",
        "POST",
        "/v1/sessions/{session}/grants",
        "approved",
        {"admin": same(403), "homeowner": (403, 404), "technician": (200, 404)},
        lambda s: {"grants": [f"{s.device}:tcp/22"]},
    ),
    Case(
        "config",
        "GET",
        "/v1/sessions/{session}/wg-quick",
        "approved",
        {"admin": same(403), "homeowner": (403, 404), "technician": (200, 404)},
    ),
    Case(
        "report",
        "GET",
        "/v1/sessions/{session}/report",
        "approved",
        {"admin": same(200), "homeowner": (200, 404), "technician": (200, 404)},
    ),
    Case("audit verify", "GET", "/v1/audit/verify", "", ADMIN_ONLY),
    Case("audit export", "GET", "/v1/audit/export", "", ADMIN_ONLY),
    Case("audit checkpoint", "POST", "/v1/audit/checkpoint", "", ADMIN_ONLY),
]

# Routes for agents refuse people's tokens, and people's routes refuse agent certificates.
AGENT_ROUTES = [
    ("GET", "/v1/agent/state?wait=0"),
    ("POST", "/v1/agent/report"),
    ("POST", "/v1/agent/renew"),
]


async def setup(h: Harness) -> tuple[World, Side, Side]:
    w = await h.world()
    await h.ok(
        "PUT", f"/v1/homes/{w.home_a}/policy", w.owner_a, json={"technicians": ["tina@example.com"]}
    )
    await h.ok(
        "PUT", f"/v1/homes/{w.home_b}/policy", w.owner_b, json={"technicians": ["tom@example.com"]}
    )
    a = Side(
        w.home_a, "ann-house", w.owner_a, w.ids["owner_a"], w.tech_a, "192.168.1.", "tv", w.admin
    )
    b = Side(
        w.home_b, "bert-flat", w.owner_b, w.ids["owner_b"], w.tech_b, "10.20.0.", "camera", w.admin
    )
    return w, a, b


async def make(h: Harness, need: str, side: Side, caller_user: str, caller: str) -> dict[str, str]:
    values = {"home": side.home, "user": caller_user}
    if need in ("requested", "approved"):
        values["session"] = (await h.request(side.tech, side.home, [f"{side.device}:tcp/443"]))[
            "id"
        ]
        if need == "approved":
            await h.ok("POST", f"/v1/sessions/{values['session']}/approve", side.owner)
    if need == "device":
        values["device"] = (
            await h.ok("POST", f"/v1/homes/{side.home}/devices", side.owner, json=device_body(side))
        )["id"]
    if need == "agent":
        values["agent"] = (await h.enroll(side.admin, side.home, "203.0.113.99:51820")).agent_id
    if need == "token":
        values["token"] = (await h.ok("POST", f"/v1/users/{caller_user}/tokens", caller, json={}))[
            "id"
        ]
    return values


FOREIGN_MARKERS = {
    # What a homeowner of home A and a technician A must never see.
    "homeowner": ["bert-flat", "10.20.0.", "bert@example.com", "tom@example.com"],
    "technician": ["bert-flat", "10.20.0.", "bert@example.com", "tom@example.com"],
}


@pytest.mark.parametrize("role", ["admin", "homeowner", "technician"])
async def test_authorization_matrix(harness: Harness, role: str) -> None:
    h = harness
    w, a, b = await setup(h)
    caller = {"admin": w.admin, "homeowner": w.owner_a, "technician": w.tech_a}[role]
    caller_id = {"admin": "", "homeowner": w.ids["owner_a"], "technician": w.ids["tech_a"]}[role]
    me = (await h.ok("GET", "/v1/me", caller))["id"]
    markers = [*FOREIGN_MARKERS.get(role, []), b.home, w.ids["tech_b"], w.ids["owner_b"]]
    failures = []
    for case in CASES:
        for which, side in (("own", a), ("foreign", b)):
            # Users and tokens: "own" is the caller, "foreign" another person.
            user = me if which == "own" else w.ids["owner_b"]
            token_owner = caller if which == "own" else b.owner
            values = await make(h, case.needs, side, user, token_owner)
            path = case.path.format(**values)
            body = case.body(side) if case.body else None
            response = await h.call(case.method, path, caller, json=body)
            expected = case.expect[role][0 if which == "own" else 1]
            if response.status_code != expected:
                got = f"{response.status_code} {response.text[:120]}"
                failures.append(f"{case.name} {which}: expected {expected}, got {got}")
            if response.status_code >= 400:
                assert isinstance(response.json()["detail"], str)
            if role != "admin":
                leaked = [m for m in markers if m in response.text]
                if leaked:
                    failures.append(f"{case.name} {which}: response shows {leaked}")
    assert not failures, "\n".join(failures)
    assert caller_id == "" or caller_id == me


async def test_anonymous_and_wrong_credentials(harness: Harness) -> None:
    h = harness
    w, a, _ = await setup(h)
    values = await make(h, "approved", a, w.ids["tech_a"], w.tech_a)
    values["device"] = "tv"
    values["token"] = "tok_x"
    values["agent"] = w.agent_a.agent_id
    for case in CASES:
        path = case.path.format(**values)
        body = case.body(a) if case.body else None
        for token in (None, "ztb_forged", w.agent_a):
            response = await h.call(case.method, path, token, json=body)
            assert response.status_code == 401, (case.name, token, response.text)
    for method, path in AGENT_ROUTES:
        for token in (None, w.admin, w.owner_a, w.tech_a):
            response = await h.call(method, path, token, json={"revision": 0})
            assert response.status_code == 401, (path, response.text)


async def test_agent_sees_only_its_own_home(harness: Harness) -> None:
    h = harness
    w, _a, _b = await setup(h)
    sid_b = (await h.request(w.tech_b, w.home_b, ["camera:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid_b}/approve", w.owner_b)
    state = await h.call("GET", "/v1/agent/state?after=0&wait=0", w.agent_a)
    assert state.json()["home_id"] == w.home_a
    assert sid_b not in state.text and "10.20.0." not in state.text
    # Counters for another home's session are ignored, and its state is untouched.
    report = {
        "revision": 1,
        "elements": [
            {
                "session_id": sid_b,
                "device_ip": "10.20.0.40",
                "proto": "tcp",
                "ports": "443",
                "packets": 9,
                "bytes": 9,
            }
        ],
    }
    assert (await h.call("POST", "/v1/agent/report", w.agent_a, json=report)).status_code == 204
    session_b = await h.ok("GET", f"/v1/sessions/{sid_b}/report", w.owner_b)
    assert session_b["session"]["state"] == "approved" and session_b["grants"][0]["packets"] == 0


async def test_foreign_attempts_are_audited(harness: Harness) -> None:
    h = harness
    w, _a, _b = await setup(h)
    sid_b = (await h.request(w.tech_b, w.home_b, ["camera:tcp/443"]))["id"]
    assert (await h.call("POST", f"/v1/sessions/{sid_b}/approve", w.owner_a)).status_code == 404
    export = await h.call("GET", "/v1/audit/export", w.admin)
    denied = [line for line in export.text.splitlines() if '"action":"denied"' in line]
    assert any(sid_b in line and "session.approve" in line for line in denied)
