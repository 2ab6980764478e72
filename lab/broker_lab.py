"""The whole product in the lab: the real broker, an enrolled agent, people on the CLI.

Everything goes through command lines, as in production: ``ztb broker bootstrap|serve``
in the broker namespace (198.51.100.2, HTTPS with the CA it made), ``ztb agent
enroll|run --state-dir`` on the router, admin and homeowner commands from the internet
host, technician commands and stock ``wg-quick`` in the technician's namespace, with the
technician's WireGuard keys kept there (``ZTB_HOME``). ``BrokerLab`` adds nothing the
product does not do; it only starts processes (recorded for cleanup by ``Lab``) and
waits for things to be true.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import netns, technician
from .harness import Lab, ztb_argv
from .topology import BROKER_IP, BROKER_PORT, WG_PORT, Technician

READY_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0
_PUBLIC_KEY = re.compile(r"^PublicKey\s*=\s*(\S+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PeopleListener:
    """A separate people's listener (``--listen`` + ``--cert/--key``) beside the agents'
    mTLS one (``--agent-listen``, the topology's broker port); ``root`` is the CA file
    people's CLIs trust for it (e.g. a public CA's root)."""

    port: int
    cert: Path
    key: Path
    root: Path


@dataclass(frozen=True, slots=True)
class Person:
    """Someone running ``ztb``: where (namespace), as whom (token), keys kept in ``home``."""

    email: str
    ns: str
    token: str
    home: Path


class CliError(RuntimeError):
    pass


class BrokerLab:
    """The broker and the enrolled agent on top of a built ``Lab`` (which cleans up)."""

    def __init__(self, lab: Lab, people: PeopleListener | None = None) -> None:
        self.lab = lab
        self.people = people
        self.topo = lab.topo
        self.data_dir = lab.run_dir / "broker"
        self.ca_cert = self.data_dir / "ca.pem"
        self.broker_log = lab.run_dir / "broker.log"
        self._broker: subprocess.Popen[bytes] | None = None
        self.admin: Person | None = None
        self.audit_public_key = ""  # printed at bootstrap: the operator keeps it elsewhere

    # ----------------------------------------------------------------- broker
    def bootstrap(self) -> Person:
        """``ztb broker bootstrap`` with the broker's address as its TLS name."""
        out = netns.run_in(
            self.topo.broker,
            ztb_argv(
                "broker", "bootstrap", "--data-dir", str(self.data_dir),
                "--tls-name", str(BROKER_IP), "--email", "admin@lab.example", "--json",
            ),
            timeout=CLI_TIMEOUT_S,
        ).stdout  # fmt: skip
        printed = json.loads(out)
        token, self.audit_public_key = printed["token"], printed["audit_public_key"]
        self.admin = Person("admin@lab.example", self.topo.host, token, self._home_dir("admin"))
        return self.admin

    def start_broker(self) -> float:
        """``ztb broker serve``; returns seconds until it accepted TLS connections."""
        t0 = time.monotonic()
        listeners = ["--listen", f"{BROKER_IP}:{BROKER_PORT}"]
        if self.people is not None:
            listeners = [
                "--agent-listen", f"{BROKER_IP}:{BROKER_PORT}",
                "--listen", f"{BROKER_IP}:{self.people.port}",
                "--cert", str(self.people.cert), "--key", str(self.people.key),
            ]  # fmt: skip
        argv = ztb_argv(
            "broker", "serve", "--data-dir", str(self.data_dir), *listeners,
            "--tls-name", str(BROKER_IP),
        )  # fmt: skip
        self._broker = self.lab.spawn(self.topo.broker, argv, "broker", self.broker_log)
        deadline = t0 + READY_TIMEOUT_S
        while not self.answers():
            if self._broker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"broker did not start: {_tail(self.broker_log)}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def kill_broker(self) -> None:
        """SIGKILL, like a crash: no shutdown handlers run."""
        if self._broker is not None and self._broker.poll() is None:
            self._broker.send_signal(signal.SIGKILL)
            self._broker.wait(timeout=10)
        self._broker = None

    def answers(self) -> bool:
        """The broker answers ``/readyz`` over HTTPS from the internet host."""
        try:
            return tls_get(self.topo.host, "/readyz", self.ca_cert.read_text())[0] == 200
        except (OSError, ssl.SSLError, ValueError):
            return False

    # ----------------------------------------------------------------- people
    def _home_dir(self, name: str) -> Path:
        path = self.lab.run_dir / "people" / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def ztb(
        self, person: Person, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ztb ARGS`` as ``person`` in their namespace, broker and CA from the environment."""
        people = self.people
        env = {
            "ZTB_BROKER": f"https://{BROKER_IP}:{people.port}" if people else self.topo.broker_url,
            "ZTB_CA_CERT": str(people.root if people else self.ca_cert),
            "ZTB_TOKEN": person.token,
            "ZTB_HOME": str(person.home),
        }
        result = netns.run_in(
            person.ns, ztb_argv(*args), env=env, timeout=CLI_TIMEOUT_S, check=False
        )
        if check and result.returncode != 0:
            raise CliError(f"ztb {' '.join(args)}: {result.stderr.strip() or result.stdout}")
        return result

    def ztb_json(self, person: Person, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ztb(person, *args, "--json").stdout)
        return data

    def add_person(self, email: str, role: str, ns: str | None = None) -> Person:
        assert self.admin is not None, "bootstrap first"
        made = self.ztb_json(self.admin, "user", "create", email, "--role", role)
        name = email.split("@")[0]
        return Person(email, ns or self.topo.host, str(made["token"]), self._home_dir(name))

    def technician(self, email: str, tech: Technician) -> Person:
        return self.add_person(email, "technician", tech.namespace)

    # ----------------------------------------------------------------- agent
    @property
    def state_dir(self) -> Path:
        return self.lab.run_dir / "agent-state"

    def agent_id(self, state_dir: Path | None = None) -> str:
        """The id the broker gave the router's agent (from its state directory)."""
        config = json.loads(((state_dir or self.state_dir) / "config.json").read_text())
        return str(config["agent_id"])

    def enroll_agent(self, home: str, state_dir: Path | None = None) -> dict[str, Any]:
        """Admin mints a one-time token; ``ztb agent enroll`` runs on the router."""
        return self.enroll_with(self.enroll_token(home), state_dir or self.state_dir)

    def enroll_token(self, home: str) -> str:
        assert self.admin is not None, "bootstrap first"
        return str(self.ztb_json(self.admin, "home", "enroll-token", home, "--ttl", "10m")["token"])

    def enroll_with(self, token: str, state_dir: Path, second_home: bool = False) -> dict[str, Any]:
        """``ztb agent enroll`` on the (second home's) router with a given token."""
        topo = self.topo
        ns, interface, endpoint = (
            (topo.router2, topo.router2_wg, topo.endpoint2)
            if second_home
            else (topo.router, topo.router_wg, topo.endpoint)
        )
        out = netns.run_in(
            ns,
            ztb_argv(
                "agent", "enroll", "--broker", topo.broker_url, "--token", token,
                "--state-dir", str(state_dir), "--interface", interface,
                "--listen-port", str(WG_PORT), "--endpoint", endpoint, "--json",
            ),
            timeout=CLI_TIMEOUT_S,
        ).stdout  # fmt: skip
        data: dict[str, Any] = json.loads(out)
        return data

    def start_agent(self, state_dir: Path | None = None) -> None:
        """``ztb agent run --state-dir`` on the router; waits for its first apply."""
        self.lab.status_file.unlink(missing_ok=True)
        self.lab.start_agent(state_dir or self.state_dir)
        self.lab.wait_applied(revision=1, timeout=READY_TIMEOUT_S)

    def start_second_agent(self, state_dir: Path) -> None:
        """The second home's agent (router2); waits until it applied a broker document."""
        status = self.lab.run_dir / "status2.json"
        argv = ztb_argv(
            "agent", "run", "--state-dir", str(state_dir),
            "--status-file", str(status), "--report-interval", "2",
        )  # fmt: skip
        log = self.lab.run_dir / "agent2.log"
        agent = self.lab.spawn(self.topo.router2, argv, "agent home 2", log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not status.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"second agent did not apply: {_tail(log)}")
            time.sleep(0.05)

    # ----------------------------------------------------------------- technician side
    def download_config(
        self, person: Person, tech: Technician, session_id: str, wait_s: float = 10.0
    ) -> Path:
        """``ztb session config --output`` into the technician's own directory; like the
        CLI, it waits up to ``wait_s`` for the router to apply the session."""
        config = person.home / f"{tech.wg_interface}.conf"
        self.disconnect(tech, config)
        self.ztb(
            person,
            "session",
            "config",
            session_id,
            "--output",
            str(config),
            "--wait",
            f"{wait_s:g}",
        )
        return config

    def tunnel_up(self, tech: Technician, config: Path) -> None:
        """Stock ``wg-quick up`` in the technician's namespace; the technician's own routes
        are widened afterwards (``lab.technician``) so blocked probes really enter the
        tunnel instead of missing it."""
        technician.connect(tech, config, router_key(config))

    def disconnect(self, tech: Technician, config: Path) -> None:
        if config.exists():
            technician.disconnect(tech, config)


def router_key(config: Path) -> str:
    """The router's WireGuard public key named in a wg-quick file."""
    match = _PUBLIC_KEY.search(config.read_text())
    if match is None:
        raise CliError(f"{config} names no router public key")
    return match.group(1)


def tls_get(
    ns: str, path: str, ca_pem: str, client_pem: Path | None = None, timeout: float = 3.0
) -> tuple[int, str]:
    """One HTTPS GET to the broker from namespace ``ns``: (status, body).

    A probe for what the CLI cannot show, such as a forged client certificate: the
    handshake failing raises ``ssl.SSLError`` or ``OSError``.
    """
    context = ssl.create_default_context(cadata=ca_pem)
    if client_pem is not None:
        context.load_cert_chain(client_pem)
    raw = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    with raw, context.wrap_socket(raw, server_hostname=str(BROKER_IP)) as tls:
        tls.connect((str(BROKER_IP), BROKER_PORT))
        request = f"GET {path} HTTP/1.1\r\nHost: {BROKER_IP}\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1]), body.decode(errors="replace")


def tls_server_verdict(ns: str, ca_pem: str, client_pem: Path, timeout: float = 3.0) -> None:
    """Complete a TLS handshake from ``ns`` with ``client_pem``, then wait for the
    broker's first record without sending anything.

    In TLS 1.3 the server judges the client's certificate after the client's side of the
    handshake is done. A refused certificate ends the TLS session there: the broker's
    asyncio TLS layer aborts the connection without flushing its alert, so this read
    raises ``ssl.SSLEOFError`` (the peer left without a close_notify; a ragged EOF is not
    hidden here). An accepted certificate gets no record: the read times out.
    """
    context = ssl.create_default_context(cadata=ca_pem)
    context.load_cert_chain(client_pem)
    raw = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    wrapped = context.wrap_socket(raw, server_hostname=str(BROKER_IP), suppress_ragged_eofs=False)
    with raw, wrapped as tls:
        tls.connect((str(BROKER_IP), BROKER_PORT))
        tls.recv(1)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text().strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(lines[-3:]) or "log empty"
