"""A flood of wrong passwords does not hold up anyone else (issue 10 item 5).

The review measured a homeowner's revoke at 0.9-1.7 s (4 ms without load) while wrong
passwords came in, because the password hash ran inside the database write transaction.
Here the real broker runs in its own process under uvicorn on a loopback socket; 64
threads send wrong passwords (bounded: at most ``FLOOD_REQUESTS`` and ``FLOOD_S``) while
the homeowner revokes ``REVOKES`` live sessions one after another. The slowest revoke
(the maximum of the ten, not a percentile) must answer within 100 ms.

The same ten revokes are first timed without the flood: on a machine other work keeps
busy (2 shared cores) even those can take longer than 100 ms, so the bound is 100 ms or
twice the slowest revoke without the flood, whichever is larger. On an idle machine that
is 100 ms; the old code took 0.9-1.7 s either way.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.bootstrap import bootstrap
from broker.config import Settings

FLOOD_THREADS = 64
FLOOD_REQUESTS = 6000
FLOOD_S = 20.0
REVOKES = 10
LIMIT_S = 0.100

SERVER = """
import socket, sys
from pathlib import Path
from typing import Any
import uvicorn
from broker.app import create_app
from broker.config import Settings

# Failure limits off: this test is about hashing outside the write lock, not about 429s.
unlimited = "1000000/second"
app = create_app(
    Settings(
        data_dir=Path(sys.argv[1]),
        sign_in_failures_per_account=unlimited,
        sign_in_failures_per_address=unlimited,
    )
)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A bootstrapped broker serving plain HTTP on a loopback port, and the admin token."""
    data_dir = tmp_path / "broker"
    admin = bootstrap(Settings(data_dir=data_dir))["token"]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, admin
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # still working through queued sign-ins
            server.kill()
            server.wait(timeout=10)


def _ok(client: httpx.Client, method: str, path: str, token: str, body: Any = None) -> Any:
    answer = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, json=body)
    assert answer.status_code < 300, (path, answer.status_code, answer.text)
    return answer.json()


def _live_sessions(client: httpx.Client, admin: str) -> tuple[str, list[str]]:
    owner = _ok(
        client,
        "POST",
        "/v1/users",
        admin,
        body={"email": "ann@example.com", "role": "homeowner", "password": "correct horse battery"},
    )["token"]
    tech = _ok(
        client, "POST", "/v1/users", admin, body={"email": "t@example.com", "role": "technician"}
    )["token"]
    home = _ok(
        client,
        "POST",
        "/v1/homes",
        admin,
        body={"name": "ann-house", "owner": "ann@example.com", "lan": "192.168.1.0/24"},
    )["id"]
    _ok(
        client,
        "POST",
        f"/v1/homes/{home}/devices",
        owner,
        body={"name": "tv", "ip": "192.168.1.30"},
    )
    sessions = []
    for _ in range(2 * REVOKES):
        body = {"home": home, "grants": ["tv:tcp/443"], "duration_s": 1800, "reason": "fix it"}
        sid = _ok(client, "POST", "/v1/sessions", tech, body)["id"]
        _ok(client, "POST", f"/v1/sessions/{sid}/approve", owner)
        sessions.append(sid)
    return owner, sessions


def _time_revokes(url: str, owner: str, sessions: list[str]) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as homeowner:
        homeowner.get("/healthz")  # the connection is open before timing
        for sid in sessions:
            began = time.perf_counter()
            answer = homeowner.post(
                f"/v1/sessions/{sid}/revoke", headers={"Authorization": f"Bearer {owner}"}
            )
            latencies.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text
            time.sleep(0.1)
    return latencies


def test_revoke_answers_within_100_ms_during_a_wrong_password_flood(
    broker_url: tuple[str, str],
) -> None:
    url, admin = broker_url
    with httpx.Client(base_url=url, timeout=30) as client:
        owner, sessions = _live_sessions(client, admin)
    quiet = _time_revokes(url, owner, sessions[:REVOKES])

    stop = threading.Event()
    sent = [0] * FLOOD_THREADS
    refused = [0] * FLOOD_THREADS
    started = time.monotonic()

    def flood(slot: int) -> None:
        wrong = {"email": "ann@example.com", "password": f"guess {slot}"}
        with httpx.Client(base_url=url, timeout=30) as flooder:
            while not stop.is_set() and sum(sent) < FLOOD_REQUESTS:
                if time.monotonic() - started > FLOOD_S:
                    return
                answer = flooder.post("/v1/auth/login", json=wrong)
                sent[slot] += 1
                refused[slot] += answer.status_code == 401

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # the flood is under way
        flooded = _time_revokes(url, owner, sessions[REVOKES:])
        flood_running = any(thread.is_alive() for thread in threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    elapsed = time.monotonic() - started
    bound = max(LIMIT_S, 2 * max(quiet))
    print(
        f"flood: {sum(sent)} wrong passwords in {elapsed:.1f}s ({sum(refused)} refused); "
        f"revoke ms without / during the flood: median {statistics.median(quiet) * 1000:.1f}"
        f" / {statistics.median(flooded) * 1000:.1f}, max {max(quiet) * 1000:.1f}"
        f" / {max(flooded) * 1000:.1f} (bound {bound * 1000:.0f})"
    )
    assert max(flooded) < bound, [round(x * 1000, 1) for x in flooded]
    assert flood_running, "the flood ended before the revokes did: they were not measured under it"
    assert sum(refused) == sum(sent)
