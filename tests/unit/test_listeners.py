"""Two listeners: agents keep their mTLS port pinned to the ztb CA while people's HTTPS uses
another certificate (a public CA's), or plain HTTP on loopback behind a reverse proxy whose
forwarded headers are believed only when it is named with ``--trusted-proxy``."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from broker import pki

from .broker_process import free_port, start, stop, wait_until_serving, ztb


def _public_style_certificate(where: Path) -> tuple[Path, Path, Path]:
    """A CA that is not the deployment's (as a public CA would be) and a cert for 127.0.0.1."""
    now = datetime.now(UTC)
    public_ca = pki.create_ca(now, "Example Public Root")
    key = pki.new_private_key()
    cert = pki.issue_server_certificate(public_ca, key.public_key(), ["127.0.0.1"], now)
    where.mkdir()
    files = where / "root.pem", where / "site.pem", where / "site.key"
    files[0].write_text(public_ca.certificate_pem)
    files[1].write_text(pki.certificate_pem(cert))
    files[2].write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return files


def _bootstrap(data_dir: Path) -> str:
    done = ztb("broker", "bootstrap", "--data-dir", str(data_dir), "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


def _serve(data_dir: Path, *options: str) -> tuple[subprocess.Popen[str], int, int]:
    people, agents = free_port(), free_port()
    argv = ["broker", "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{people}"]
    argv += ["--agent-listen", f"127.0.0.1:{agents}", *options]
    process = start([sys.executable, "-m", "ztb", *argv])
    wait_until_serving(process, f"https://127.0.0.1:{agents}", data_dir / "ca.pem")
    return process, people, agents


def _agent_state(url: str, state_dir: Path) -> int:
    """GET /v1/agent/state with the enrolled agent's client certificate: the status."""
    context = ssl.create_default_context(cafile=str(state_dir / "ca.pem"))
    context.load_cert_chain(state_dir / "client.pem")
    host, port = url.removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request("GET", "/v1/agent/state?after=0&wait=0")
        return connection.getresponse().status
    finally:
        connection.close()


def test_public_certificate_for_people_while_agents_keep_their_pinned_mtls_listener(
    tmp_path: Path,
) -> None:
    root, site_cert, site_key = _public_style_certificate(tmp_path / "public")
    data_dir = tmp_path / "broker"
    admin = _bootstrap(data_dir)
    process, people, agents = _serve(data_dir, "--cert", str(site_cert), "--key", str(site_key))
    people_url, agents_url = f"https://127.0.0.1:{people}", f"https://127.0.0.1:{agents}"
    try:
        as_people = {"ZTB_BROKER": people_url, "ZTB_TOKEN": admin, "ZTB_CA_CERT": str(root)}
        # People's CLI trusts the public root only; the ztb CA is not needed.
        made = ztb("user", "create", "ann@example.com", "--role", "homeowner", env=as_people)
        assert made.returncode == 0, made.stderr
        home = ztb(
            "home",
            "create",
            "ann-house",
            "--owner",
            "ann@example.com",
            "--lan",
            "192.168.1.0/24",
            "--json",
            env=as_people,
        )
        assert home.returncode == 0, home.stderr
        minted = ztb("home", "enroll-token", json.loads(home.stdout)["id"], "--json", env=as_people)
        assert minted.returncode == 0, minted.stderr
        # The agent pins the ztb CA (fingerprint in the token) on its own listener.
        state_dir = tmp_path / "agent"
        enrolled = ztb(
            "agent",
            "enroll",
            "--broker",
            agents_url,
            "--token",
            json.loads(minted.stdout)["token"],
            "--state-dir",
            str(state_dir),
            "--interface",
            "ztb0",
            "--listen-port",
            "51820",
            "--endpoint",
            "203.0.113.10:51820",
        )
        assert enrolled.returncode == 0, enrolled.stderr
        assert _agent_state(agents_url, state_dir) == 200
        # The people's listener shows the public certificate: the agent's pin refuses it.
        with pytest.raises(ssl.SSLCertVerificationError):
            _agent_state(people_url, state_dir)
        assert ssl.get_server_certificate(("127.0.0.1", agents), ca_certs=str(data_dir / "ca.pem"))
    finally:
        stop(process)


def test_a_foreign_certificate_without_an_agent_listener_is_refused(tmp_path: Path) -> None:
    _, site_cert, site_key = _public_style_certificate(tmp_path / "public")
    data_dir = tmp_path / "broker"
    _bootstrap(data_dir)
    argv = ["broker", "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}"]
    refused = ztb(*argv, "--cert", str(site_cert), "--key", str(site_key))
    assert refused.returncode != 0
    assert "--agent-listen" in refused.stderr.splitlines()[-1]
    exposed = ztb(
        "broker",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        "0.0.0.0:1",
        "--agent-listen",
        f"127.0.0.1:{free_port()}",
        "--plain-http",
    )
    assert exposed.returncode != 0
    assert "loopback only" in exposed.stderr


def test_forwarded_headers_are_believed_from_the_trusted_proxy_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    _bootstrap(data_dir)
    trusted = _access_log(data_dir, "--trusted-proxy", "127.0.0.1")
    assert (trusted["client"], trusted["scheme"]) == ("198.51.100.7", "https")
    untrusted = _access_log(data_dir)
    assert (untrusted["client"], untrusted["scheme"]) == ("127.0.0.1", "http")


def _access_log(data_dir: Path, *options: str) -> dict[str, object]:
    process, people, _ = _serve(data_dir, "--plain-http", *options)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", people, timeout=10)
        headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        connection.request("GET", "/v1/audit/verify", headers=headers)
        assert connection.getresponse().status == 401
        connection.close()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    lines: list[dict[str, object]] = [
        json.loads(line) for line in stderr.splitlines() if line.startswith("{")
    ]
    (entry,) = [line for line in lines if line.get("route") == "/v1/audit/verify"]
    return entry
