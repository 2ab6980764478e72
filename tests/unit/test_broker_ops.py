"""Operations and integration edges: health, metrics, OpenAPI, webhooks, wg-quick files,
TOTP step-up, bootstrap, and a throughput measurement."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from broker.webhook_targets import WebhookTargets, parse_networks
from ztb.wgkeys import key_pair

from .broker_harness import Harness, anyio_backend, harness
from .http_receiver import QuietHandler, serving

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio


async def test_health_ready_metrics_openapi(harness: Harness) -> None:
    h = harness
    w = await h.world()
    assert (await h.call("GET", "/healthz")).json() == {"status": "ok"}
    assert (await h.call("GET", "/readyz")).status_code == 200
    await h.request(w.tech_a, "ann-house", ["tv:tcp/443"])
    metrics = (await h.call("GET", "/metrics")).text
    assert 'ztb_http_requests_total{method="POST",route="/v1/sessions",status="201"} 1.0' in metrics
    assert 'ztb_session_transitions_total{to="requested"} 1.0' in metrics
    spec = (await h.call("GET", "/openapi.json")).json()
    assert "/v1/sessions/{session_id}/wg-quick" in spec["paths"]
    assert "/v1/agent/state" in spec["paths"]


class Receiver(QuietHandler):
    """Answers 500 to the first delivery (to exercise retries), then 204."""

    received: list[tuple[dict[str, str], bytes]] = []
    failures_left = 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.failures_left > 0:
            Receiver.failures_left -= 1
            self.send_response(500)
        else:
            Receiver.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received, Receiver.failures_left = [], 1
    with serving(Receiver) as url:
        yield url


async def test_webhooks_are_signed_and_retried(harness: Harness, receiver: str) -> None:
    h = harness
    w = await h.world()
    h.broker.webhooks.targets = WebhookTargets(parse_networks(["127.0.0.0/8"]))  # the receiver
    home = await h.ok("PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json={"webhook_url": receiver})
    secret = home["webhook_secret"]
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    report = {"revision": 2}
    await h.call("POST", "/v1/agent/report", w.agent_a, json=report)
    await h.ok("POST", f"/v1/sessions/{sid}/revoke", w.owner_a)
    assert h.broker.webhooks.drain(10)
    events = []
    for headers, body in Receiver.received:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Ztb-Signature"], expected)
        events.append(json.loads(body)["event"])
        assert json.loads(body)["session"]["id"] == sid
        assert json.loads(body)["audit"]["seq"] >= 1  # a digest the homeowner can keep
    assert events == ["session.requested", "session.approved", "session.started", "session.ended"]
    metrics = (await h.call("GET", "/metrics")).text
    assert 'ztb_webhook_deliveries_total{outcome="delivered"} 4.0' in metrics


def _run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=20, check=False, **kwargs)


@pytest.mark.tools("wg-quick")
async def test_config_passes_wg_quick_strip(harness: Harness, tmp_path: Path) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443", "thermostat:udp/5683"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    text = (await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)).text
    conf = tmp_path / "ztbtest.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    stripped = _run("wg-quick", "strip", str(conf))
    assert stripped.returncode == 0, stripped.stderr
    assert "Address" not in stripped.stdout and "PrivateKey" in stripped.stdout
    assert "AllowedIPs = 192.168.1.20/32, 192.168.1.30/32" in stripped.stdout
    again = tmp_path / "ztbtest2.conf"
    again.write_text(stripped.stdout)
    again.chmod(0o600)
    assert _run("wg-quick", "strip", str(again)).stdout.strip() == stripped.stdout.strip()
    qr = await h.call("GET", f"/v1/sessions/{sid}/wg-quick?format=qr-svg", w.tech_a)
    assert qr.status_code == 200 and qr.headers["content-type"] == "image/svg+xml"


@pytest.mark.lab
async def test_config_is_accepted_by_wg_setconf(harness: Harness, tmp_path: Path) -> None:
    """``wg setconf`` on a wireguard-go interface inside a private network namespace."""
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    text = (await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)).text
    conf = tmp_path / "ztbtest.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    stripped = tmp_path / "stripped.conf"
    stripped.write_text(_run("wg-quick", "strip", str(conf)).stdout)
    suffix = uuid.uuid4().hex[:6]
    netns, ifname = f"ztbbt-{suffix}", f"ztbbt{suffix}"
    assert _run("ip", "netns", "add", netns).returncode == 0
    process = None
    try:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, "wireguard-go", "-f", ifname],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket = Path(f"/var/run/wireguard/{ifname}.sock")
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = _run("ip", "netns", "exec", netns, "wg", "setconf", ifname, str(stripped))
        assert result.returncode == 0, result.stderr
        shown = _run("ip", "netns", "exec", netns, "wg", "show", ifname, "allowed-ips").stdout
        assert "192.168.1.30/32" in shown
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        _run("ip", "netns", "del", netns)
        Path(f"/var/run/wireguard/{ifname}.sock").unlink(missing_ok=True)


async def test_totp_login_and_step_up_approval(harness: Harness) -> None:
    h = harness
    w = await h.world()
    await h.ok("POST", "/v1/me/password", w.owner_a, json={"password": "correct horse battery"})
    setup = await h.ok("POST", "/v1/me/totp", w.owner_a)
    totp = pyotp.TOTP(setup["secret"])
    code = totp.at(h.clock.now)
    assert (
        await h.call("POST", "/v1/me/totp/confirm", w.owner_a, json={"code": code})
    ).status_code == 204

    login = {"email": "ann@example.com", "password": "correct horse battery"}
    assert (await h.call("POST", "/v1/auth/login", json=login)).status_code == 401  # code missing
    replay = await h.call("POST", "/v1/auth/login", json={**login, "totp": code})
    assert replay.status_code == 401  # the confirm already used this code
    h.clock.advance(30)
    fresh = await h.call("POST", "/v1/auth/login", json={**login, "totp": totp.at(h.clock.now)})
    assert fresh.status_code == 200 and fresh.json()["token"]
    wrong = await h.call(
        "POST", "/v1/auth/login", json={**login, "password": "nope", "totp": "000000"}
    )
    assert wrong.status_code == 401

    await h.ok(
        "PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json={"require_totp_for_approval": True}
    )
    sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"]))["id"]
    bare = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={})
    assert bare.status_code == 403
    h.clock.advance(30)
    code = totp.at(h.clock.now)
    ok = await h.call("POST", f"/v1/sessions/{sid}/approve", w.owner_a, json={"totp": code})
    assert ok.status_code == 200, ok.text


async def test_bootstrap_command_prints_a_working_admin_token(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from broker.cli.server import app as server_app

    data_dir = tmp_path / "data"
    result = CliRunner().invoke(server_app, ["bootstrap", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["token"].startswith("ztb_")
    assert (data_dir / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    assert data_dir.stat().st_mode & 0o777 == 0o700
    again = CliRunner().invoke(server_app, ["bootstrap", "--data-dir", str(data_dir)])
    assert again.exit_code != 0


# A smoke-sized loop (sessions stay live, so this is also 40 distinct tunnel addresses);
# lab/bench/broker_capacity.py is the real measurement, over HTTP and in-process.
ROUNDS = 40


async def test_request_approve_config_throughput(harness: Harness) -> None:
    """Bounded loop, in-process, real SQLite file: prints ops/s (one op = three calls)."""
    h = harness
    w = await h.world()
    await h.ok("PUT", f"/v1/homes/{w.home_a}/policy", w.owner_a, json={"max_duration_s": 3600})
    rounds, started = 0, time.perf_counter()
    while rounds < ROUNDS and time.perf_counter() - started < 60:
        _, public = key_pair()
        sid = (await h.request(w.tech_a, "ann-house", ["tv:tcp/443"], public_key=public))["id"]
        await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
        config = await h.call("GET", f"/v1/sessions/{sid}/wg-quick", w.tech_a)
        assert config.status_code == 200
        rounds += 1
    elapsed = time.perf_counter() - started
    print(f"\nrequest->approve->config: {rounds / elapsed:.1f} ops/s over {rounds} rounds")
    assert rounds == ROUNDS
