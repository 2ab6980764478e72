"""The client commands end to end: the real ``ztb`` against the real broker over real HTTPS.

The broker runs in a uvicorn thread on a free 127.0.0.1 port with the CA and certificate
``bootstrap`` made, so every run also checks ``--ca-cert`` trust. The agent side is one
enrollment call and reports over mTLS (no router needed).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyotp
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.broker_link.cert_client import pinned_ssl_context
from agent.broker_link.enroll import new_tls_key_and_csr
from broker.app import create_app
from broker.audit import Signer
from broker.bootstrap import bootstrap
from broker.config import Settings
from broker.tls_server import https_config
from ztb.cli import main
from ztb.wgkeys import key_pair

STARTUP_TIMEOUT_S = 10.0


@dataclass
class LiveBroker:
    url: str
    ca_cert: Path
    data_dir: Path
    admin: str


@pytest.fixture
def live_broker(tmp_path: Path) -> Iterator[LiveBroker]:
    """A bootstrapped broker serving HTTPS in a background thread, stopped afterwards."""
    data_dir = tmp_path / "broker"
    settings = Settings(data_dir=data_dir, tls_names=("127.0.0.1",))
    admin = bootstrap(settings, "admin@example.com")["token"]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(
        https_config(app, data_dir, "127.0.0.1", port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("broker did not start")
            time.sleep(0.02)
        yield LiveBroker(f"https://127.0.0.1:{port}", data_dir / "ca.pem", data_dir, admin)
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()


@pytest.fixture
def ztb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZTB_HOME", str(tmp_path / "tech"))
    return tmp_path / "tech"


class Cli:
    """Runs ``ztb`` in-process as one person; broker and CA come from the environment."""

    def __init__(self, capsys: pytest.CaptureFixture[str], token: str) -> None:
        self.capsys, self.token = capsys, token

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*args, "--token", self.token])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, err
        return out

    def json(self, *args: str) -> dict[str, object]:
        out = self.ok(*args, "--json")
        assert out.count("\n") == 1, out  # exactly one object, one line
        data = json.loads(out)
        assert isinstance(data, dict)
        return data

    def fails(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code != 0, out
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("ztb: error: "), err
        assert "Traceback" not in err
        return err.strip()


@dataclass
class People:
    admin: Cli
    owner: Cli
    tech: Cli
    home_id: str
    router: FakeRouter


class FakeRouter:
    """The agent's side of the API: enroll once, then report counters over mTLS."""

    def __init__(self, broker: LiveBroker, enroll_token: str, tmp_path: Path) -> None:
        self.url = broker.url
        _, self.public_key = key_pair()
        key, csr_pem = new_tls_key_and_csr("ztb-agent")
        body = {
            "token": enroll_token,
            "csr_pem": csr_pem,
            "wg_public_key": self.public_key,
            "interface": "ztb0",
            "listen_port": 51820,
            "endpoint": "203.0.113.10:51820",
        }
        trust = ssl.create_default_context(cafile=broker.ca_cert)
        with httpx.Client(verify=trust) as anonymous:
            response = anonymous.post(f"{self.url}/v1/agent/enroll", json=body)
        assert response.status_code == 201, response.text
        self.agent_id = str(response.json()["agent_id"])
        client_pem = tmp_path / "client.pem"
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        client_pem.write_text(response.json()["certificate_pem"] + key_pem)
        client_pem.chmod(0o600)
        self.http = httpx.Client(verify=pinned_ssl_context(broker.ca_cert.read_text(), client_pem))

    def report(self, revision: int, peers: list[object], elements: list[object]) -> int:
        body = {"revision": revision, "peers": peers, "elements": elements}
        return self.http.post(f"{self.url}/v1/agent/report", json=body).status_code


@pytest.fixture
def people(
    live_broker: LiveBroker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ztb_home: Path,
) -> Iterator[People]:
    """Admin sets up a homeowner with an enrolled home and two devices, and a technician."""
    monkeypatch.setenv("ZTB_BROKER", live_broker.url)
    monkeypatch.setenv("ZTB_CA_CERT", str(live_broker.ca_cert))
    admin = Cli(capsys, live_broker.admin)

    created = admin.json("user", "create", "ann@example.com", "--role", "homeowner")
    assert {"id", "token"} <= created.keys()
    owner = Cli(capsys, str(created["token"]))
    # Human output: the token alone on stdout (for $(...)), the sentence on stderr.
    code, out, err = admin.run("user", "create", "tina@example.com", "--role", "technician")
    assert code == 0 and "created technician tina@example.com" in err
    tech = Cli(capsys, out.strip())
    assert "tina@example.com" in tech.ok("user", "whoami")

    home = admin.json(
        "home", "create", "ann-house", "--owner", "ann@example.com", "--lan", "192.168.1.0/24"
    )
    assert str(home["id"]).startswith("home_")
    owner.ok("device", "add", "ann-house", "thermostat", "--ip", "192.168.1.20")
    owner.ok(
        "device", "add", "ann-house", "tv", "--ip", "192.168.1.30", "--mac", "aa:bb:cc:00:11:22"
    )
    enroll_token = admin.ok("home", "enroll-token", "ann-house", "--ttl", "5m").strip()
    router = FakeRouter(live_broker, enroll_token, tmp_path)
    try:
        yield People(admin, owner, tech, str(home["id"]), router)
    finally:
        router.http.close()


def test_full_story(people: People, ztb_home: Path, tmp_path: Path) -> None:
    admin, owner, tech = people.admin, people.owner, people.tech
    devices = owner.ok("device", "list", "ann-house").splitlines()
    assert devices[0].split() == ["ID", "NAME", "IP", "MAC"]
    assert any(line.split()[1:] == ["tv", "192.168.1.30", "aa:bb:cc:00:11:22"] for line in devices)
    shown = admin.ok("home", "show", "ann-house")
    assert "203.0.113.10:51820" in shown and "CERTIFICATE EXPIRES" in shown

    # Technician asks; the key pair is made here and only the public half is sent.
    session_id = tech.ok(
        "session", "request", "--home", "ann-house",
        "--grant", "thermostat:tcp/443", "--grant", "tv:tcp/8000-8010",
        "--duration", "30m", "--reason", "thermostat firmware",
    ).strip()  # fmt: skip
    assert session_id.startswith("ses_")
    key_file = ztb_home / "keys" / f"{session_id}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private_key = key_file.read_text().strip()
    session = tech.json("session", "show", session_id)
    assert session["public_key"] == key_pair(private_key)[1]
    assert session["key_origin"] == "technician"
    assert [p.name for p in (ztb_home / "keys").iterdir()] == [key_file.name]

    approved = owner.ok("session", "approve", session_id, "--duration", "20m")
    assert approved.startswith(f"session {session_id}  approved  thermostat 192.168.1.20 tcp/443")
    assert "tv 192.168.1.30 tcp/8000-8010" in approved and "expires " in approved
    listed = owner.ok("session", "list", "--home", "ann-house", "--state", "approved")
    assert session_id in listed
    # People read names and emails; --json keeps the ids (and adds the names).
    assert "ann-house" in listed and people.home_id not in listed
    shown = owner.ok("session", "show", session_id)
    assert "technician  tina@example.com" in shown and "usr_" not in shown
    assert "approved    ann@example.com at " in shown and "home_" not in shown
    shown_json = owner.json("session", "show", session_id)
    assert shown_json["home_id"] == people.home_id and shown_json["home_name"] == "ann-house"
    assert str(shown_json["technician_id"]).startswith("usr_")
    assert shown_json["technician_email"] == "tina@example.com"
    owner_line = "owner        ann@example.com"
    assert owner_line in admin.ok("home", "show", "ann-house")
    assert "tina@example.com" in tech.ok("user", "token", "list")
    handshake = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert people.router.report(
        int(admin.json("home", "show", "ann-house")["revision"]),  # type: ignore[call-overload]
        [{"public_key": session["public_key"], "last_handshake": handshake.timestamp()}],
        [
            {"session_id": session_id, "device_ip": "192.168.1.20", "proto": "tcp",
             "ports": "443", "packets": 12, "bytes": 1536},
        ],
    ) == 204  # fmt: skip
    assert tech.json("session", "show", session_id)["state"] == "active"

    # The config: local private key filled in, split tunnel to exactly the two devices.
    conf = tmp_path / "ztbt0.conf"
    assert "wg-quick up" in tech.ok("session", "config", session_id, "--output", str(conf))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    lines = text.splitlines()
    assert f"PrivateKey = {private_key}" in lines
    assert "AllowedIPs = 192.168.1.20/32, 192.168.1.30/32" in lines
    assert f"Address = {tech.json('session', 'show', session_id)['tunnel_ip']}/32" in lines
    assert tech.ok("session", "config", session_id) == text
    wg_quick = shutil.which("wg-quick")
    assert wg_quick is not None, "wg-quick is a required tool (see Makefile APT_PACKAGES)"
    stripped = subprocess.run([wg_quick, "strip", str(conf)], capture_output=True, text=True)
    assert stripped.returncode == 0 and stripped.stderr == "", stripped.stderr
    assert f"PrivateKey = {private_key}" in stripped.stdout
    qr = tech.ok("session", "config", session_id, "--qr")
    assert "█" in qr or "▀" in qr
    # Given a directory, ztb names the file so wg-quick accepts it; a name it would refuse
    # (interface names are at most 15 characters) is refused before anything is written.
    named = tech.ok("session", "config", session_id, "--output", str(tmp_path))
    assert f"wrote {tmp_path / 'ztb-ann-house.conf'}" in named
    stripped = subprocess.run(
        [wg_quick, "strip", str(tmp_path / "ztb-ann-house.conf")], capture_output=True, text=True
    )
    assert stripped.returncode == 0 and f"PrivateKey = {private_key}" in stripped.stdout
    too_long = tmp_path / f"ztb-{session_id}.conf"
    assert "at most 15" in tech.fails("session", "config", session_id, "-o", str(too_long))
    assert not too_long.exists()

    revoked = tech.ok("session", "revoke", session_id, "--reason", "done")
    assert f"session {session_id}  ended (revoked)" in revoked
    assert "not live" in tech.fails("session", "config", session_id)

    report = owner.ok("session", "report", session_id)
    assert "approved by     ann@example.com at " in report
    assert "technician      tina@example.com" in report and "usr_" not in report
    assert "thermostat 192.168.1.20 tcp/443  12       1.5 KiB" in report
    assert "last handshake  2026-01-02 03:04 UTC" in report
    assert "session.active" in report
    for action in ("session.requested", "session.approved", "session.ended"):
        assert action in report
    report_json = owner.json("session", "report", session_id)
    assert report_json["session"]["id"] == session_id  # type: ignore[index]

    # The admin cuts the router off: its certificate is refused from the next request on.
    agent_id = people.router.agent_id
    assert agent_id in admin.ok("home", "show", "ann-house")
    assert f"revoked agent {agent_id}" in admin.ok("home", "revoke-agent", "ann-house", agent_id)
    assert people.router.report(0, [], []) == 401
    assert "revoked" in admin.ok("home", "show", "ann-house")
    assert "(HTTP 409)" in admin.fails("home", "revoke-agent", "ann-house", agent_id)

    assert admin.ok("audit", "verify").startswith("audit chain ok: ")
    exported = [json.loads(line) for line in admin.ok("audit", "export").splitlines()]
    assert [e["seq"] for e in exported] == list(range(1, len(exported) + 1))
    assert len(admin.json("audit", "export")["events"]) == len(exported)  # type: ignore[arg-type]


def test_audit_verify_fails_on_an_edited_event(people: People, live_broker: LiveBroker) -> None:
    people.admin.ok("audit", "verify")
    with sqlite3.connect(live_broker.data_dir / "broker.db") as db:
        db.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    message = people.admin.fails("audit", "verify")
    assert "audit chain broken at event 3" in message


def test_audit_verify_against_the_pinned_key_and_saved_digests(
    people: People, live_broker: LiveBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key ``broker audit-key`` prints (as bootstrap did) is pinned in a file; a saved
    session report is a witness; a key of someone else's fails."""
    capsys.readouterr()
    assert main(["broker", "audit-key", "--data-dir", str(live_broker.data_dir)]) == 0
    key_file = tmp_path / "audit.pub"
    key_file.write_text(capsys.readouterr().out)
    admin = people.admin
    sid = str(
        people.tech.json(
            "session",
            "request",
            "--home",
            "ann-house",
            "--grant",
            "tv:tcp/443",
            "--duration",
            "30m",
            "--reason",
            "x",
        )["id"]
    )
    report = tmp_path / "report.json"
    report.write_text(people.owner.ok("session", "report", sid, "--json"))
    out = admin.ok("audit", "verify", "--public-key", str(key_file), "--against", str(report))
    assert out.startswith("audit chain ok: ") and "1 saved digests" in out and "pinned key" in out
    other = Signer(Ed25519PrivateKey.generate()).public_key
    assert "not signed by the trusted key" in admin.fails("audit", "verify", "--public-key", other)
    with sqlite3.connect(live_broker.data_dir / "broker.db") as db:
        db.execute(
            "UPDATE audit_events SET hash = 'ab' || substr(hash, 3) WHERE seq = "
            "(SELECT MAX(seq) FROM audit_events)"
        )
    message = admin.fails(
        "audit", "verify", "--public-key", str(key_file), "--against", str(report)
    )
    assert "audit chain broken" in message


def test_json_output_of_creating_commands(people: People, tmp_path: Path) -> None:
    device = people.owner.json("device", "add", "ann-house", "camera", "--ip", "192.168.1.40")
    assert str(device["id"]).startswith("dev_")
    token = people.tech.json("user", "token", "create", "--name", "laptop", "--ttl", "1h")
    assert {"id", "token"} <= token.keys()
    enroll = people.admin.json("home", "enroll-token", "ann-house")
    assert {"id", "token"} <= enroll.keys()
    session = people.tech.json(
        "session", "request", "--home", people.home_id, "--grant", "camera:tcp/554",
        "--duration", "10m", "--reason", "check stream",
    )  # fmt: skip
    assert str(session["id"]).startswith("ses_") and session["state"] == "requested"
    assert str(session["private_key_file"]).endswith(f"{session['id']}.key")

    own_key = tmp_path / "laptop.key"
    own_key.write_text(key_pair()[0] + "\n")
    with_own_key = people.tech.json(
        "session", "request", "--home", "ann-house", "--grant", "camera:tcp/80",
        "--duration", "10m", "--reason", "check", "--key-file", str(own_key),
    )  # fmt: skip
    assert with_own_key["public_key"] == key_pair(own_key.read_text().strip())[1]
    kept = Path(str(with_own_key["private_key_file"]))
    assert kept.read_text() == own_key.read_text()
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    assert "bad.key" in people.tech.fails(
        "session", "request", "--home", "ann-house", "--grant", "camera:tcp/80",
        "--duration", "10m", "--reason", "check", "--key-file", str(bad_key),
    )  # fmt: skip


def test_tokens_and_totp(people: People, capsys: pytest.CaptureFixture[str]) -> None:
    issued = people.tech.json("user", "token", "create")
    second = Cli(capsys, str(issued["token"]))
    assert "tina@example.com" in second.ok("user", "whoami")
    assert str(issued["id"]) in people.tech.ok("user", "token", "list")
    people.tech.ok("user", "token", "revoke", str(issued["id"]))
    assert "(HTTP 401)" in second.fails("user", "whoami")

    enrollment = people.owner.json("user", "totp", "enable")
    assert str(enrollment["uri"]).startswith("otpauth://totp/")
    totp = pyotp.TOTP(str(enrollment["secret"]))
    # Each time step is good once: confirm with the previous step's code, approve with now's.
    previous = totp.at(time.time() - 30)
    assert people.owner.ok("user", "totp", "confirm", previous).strip() == "TOTP is on"
    people.owner.ok("home", "policy", "ann-house", "--require-totp", "--max-duration", "45m")
    shown = people.owner.ok("home", "policy", "ann-house")
    assert "require totp  yes" in shown and "max duration  45m" in shown

    session_id = people.tech.ok(
        "session", "request", "--home", "ann-house", "--grant", "tv:tcp/80",
        "--duration", "15m", "--reason", "update", "--no-local-key",
    ).strip()  # fmt: skip
    assert "TOTP" in people.owner.fails("session", "approve", session_id)
    approved = people.owner.json("session", "approve", session_id, "--totp", totp.now())
    assert approved["state"] == "approved" and approved["key_origin"] == "broker"
    # A broker-made key is revealed in the first download only. No router runs here, so
    # the session stays "approved": do not wait for it to become active.
    first = people.tech.ok("session", "config", session_id, "--wait", "0")
    assert "<your private key>" not in first
    assert "not on this machine" in people.tech.fails(
        "session", "config", session_id, "--wait", "0"
    )
    # No QR code without the key either, and the reason is said.
    assert "shown once, in the first config download" in people.tech.fails(
        "session", "config", session_id, "--wait", "0", "--qr"
    )


def test_errors_are_one_line(people: People) -> None:
    assert "(HTTP 404)" in people.tech.fails("session", "show", "ses_doesnotexist")
    assert "grant must look like" in people.tech.fails(
        "session", "request", "--home", "ann-house", "--grant", "thermostat/443",
        "--duration", "30m", "--reason", "x",
    )  # fmt: skip
    assert "(HTTP 403)" in people.tech.fails(
        "home", "create", "x", "--owner", "a", "--lan", "10.9.0.0/24"
    )
    assert "thermostat" in people.owner.fails(
        "device", "add", "ann-house", "thermostat", "--ip", "192.168.1.99"
    )


def test_deny_cancel_escalate_and_remove(people: People, ztb_home: Path) -> None:
    owner, tech = people.owner, people.tech

    def request(grant: str) -> str:
        args = ["--duration", "10m", "--reason", "look"]
        return tech.ok("session", "request", "--home", "ann-house", "--grant", grant, *args).strip()

    denied = owner.ok("session", "deny", request("tv:tcp/80"), "--reason", "not today")
    assert "ended (denied)" in denied
    cancelled = request("tv:tcp/81")
    assert "ended (cancelled)" in tech.ok("session", "cancel", cancelled)
    assert "nothing to deny" in owner.fails("session", "deny", cancelled)

    live = request("thermostat:tcp/443")
    owner.ok("session", "approve", live)
    asked = tech.ok("session", "add-grant", live, "--grant", "tv:udp/5353")
    assert "pending tv 192.168.1.30 udp/5353" in asked
    assert "pending" in tech.ok("session", "show", live)
    widened = owner.json("session", "approve", live)
    assert widened["pending_grants"] == []
    assert len(widened["grants"]) == 2  # type: ignore[arg-type]
    assert "grant must look like" in tech.fails("session", "add-grant", live, "--grant", "tv")

    # One key per request that reached the broker, none left half-written.
    keys = sorted(p.stem for p in (ztb_home / "keys").iterdir())
    assert len(keys) == 3 and all(k.startswith("ses_") for k in keys) and live in keys

    assert "removed tv from ann-house" in owner.ok("device", "remove", "ann-house", "tv")
    assert "tv" not in owner.ok("device", "list", "ann-house").split()


def test_password_login(
    people: People, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    people.admin.ok("user", "create", "tom@example.com", "--role", "technician", "--password-stdin")
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    capsys.readouterr()
    assert main(["user", "login", "tom@example.com", "--password-stdin", "--json"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert "tom@example.com" in Cli(capsys, str(issued["token"])).ok("user", "whoami")
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    assert main(["user", "login", "tom@example.com", "--password-stdin"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(HTTP 401)" in err


def test_ca_fetch_and_login_make_a_profile(
    live_broker: LiveBroker,
    ztb_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A technician pins the CA by its fingerprint, logs in once, then needs no flags."""
    for name in ("ZTB_BROKER", "ZTB_TOKEN", "ZTB_CA_CERT"):
        monkeypatch.delenv(name, raising=False)
    url = live_broker.url
    der = ssl.PEM_cert_to_DER_cert(live_broker.ca_cert.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    fingerprint = "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    wrong = "SHA256:" + "00" * 32
    code, _, err = run("ca", "fetch", "--broker", url, "--fingerprint", wrong)
    assert code == 1 and "not the pinned" in err
    assert not (ztb_home / "ca.pem").exists()
    code, _, err = run("ca", "fetch", "--broker", url, "--fingerprint", "abc")
    assert code == 2 and "64 hex digits" in err

    code, out, err = run("ca", "fetch", "--broker", url, "--fingerprint", fingerprint)
    assert code == 0, err
    fetched = ztb_home / "ca.pem"
    assert ssl.PEM_cert_to_DER_cert(fetched.read_text()) == der
    assert stat.S_IMODE(fetched.stat().st_mode) == 0o600

    # The admin makes a technician with a password; she signs in with it once. The
    # fetched CA is already trusted for this broker.
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-passphrase\n"))
    admin = ["--broker", url, "--token", live_broker.admin]
    code, _, err = run(
        "user", "create", "tia@example.com", "--role", "technician", "--password-stdin", *admin
    )
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-passphrase\n"))
    code, out, err = run("login", "tia@example.com", "--password-stdin", "--broker", url)
    assert code == 0, err
    assert "logged in as tia@example.com (technician)" in out
    saved = ztb_home / "profile.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(ztb_home.stat().st_mode) == 0o700
    assert json.loads(saved.read_text())["ca_cert"] == str(fetched.resolve())

    # From now on: no flags, no ZTB_* variables.
    code, out, err = run("user", "whoami")
    assert code == 0 and out.startswith("tia@example.com  technician"), err
    # The profile's token never goes to another broker.
    code, _, err = run("session", "list", "--broker", "https://127.0.0.1:9")
    assert code == 2 and "no API token" in err
    # Logging in with a given token replaces the profile.
    code, out, err = run("login", "--token", live_broker.admin, "--broker", url)
    assert code == 0 and "admin@example.com (admin)" in out, err
    assert run("user", "whoami")[1].startswith("admin@example.com  admin")
