"""``Lab``: build the namespaces, run the services and the real agent, tear it all down.

Usage::

    with Lab() as lab:
        lab.apply([lab.session(lab.tech(1), ["thermostat:tcp/443"], expires_in=60)])
        probes.probe(lab.tech(1).namespace, lab.target("thermostat", "tcp", 443))

The agent is driven only through its command line and files (desired state in, status
out), exactly as on a router. Everything started is recorded in the run directory first,
so ``ztb lab down`` can clean up after a run that crashed.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wireguard_tools import WireguardKey

from netpolicy.grants import Grant, GrantSpec
from netpolicy.model import DesiredState, LiveSession
from netpolicy.nft import ElementKey, KernelElement, parse_set_listing
from ztb.files import write_atomic

from . import netns, services, technician, topology
from .probes import Target
from .runstate import RUN_ROOT, Process, RunState, remove_leftovers, stop_process
from .topology import ROUTER_SERVICES, WG_PORT, Service, Technician, Topology

READY_TIMEOUT_S = 10.0
APPLY_TIMEOUT_S = 15.0
SERVICE_LIFETIME_S = 4 * 3600  # servers end themselves even if nobody cleans up


_EXPIRES = re.compile(r"expires ((?:\d+(?:ms|[dhms]))+)")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration_s(text: str) -> float:
    return sum(int(n) * _UNIT_S[unit] for n, unit in re.findall(r"(\d+)(ms|[dhms])", text))


def random_prefix() -> str:
    return f"ztl{secrets.token_hex(3)}"


def ztb_argv(*args: str) -> list[str]:
    """``ztb ...`` through this interpreter, so the lab runs the code it was started from."""
    return [sys.executable, "-m", "ztb", *args]


class AgentError(RuntimeError):
    pass


class Lab:
    """One lab instance; a context manager that always cleans up, also after failure."""

    def __init__(
        self,
        prefix: str | None = None,
        technicians: int = 2,
        run_root: Path = RUN_ROOT,
        homes: int = 1,
        start_agent: bool = True,
        connect_technicians: bool = True,
    ) -> None:
        self.topo = Topology(prefix or random_prefix(), technicians, homes)
        self.run_dir = run_root / self.topo.prefix
        self.state = RunState(self.topo.prefix, self.run_dir)
        self.router_keys = technician.KeyPair.generate()
        self.tech_keys = {t.index: technician.KeyPair.generate() for t in self.topo.technicians}
        self.revision = 0
        self.desired: DesiredState | None = None
        self.agent: Process | None = None
        self._agent_popen: subprocess.Popen[bytes] | None = None
        self._start_agent = start_agent
        self._connect_technicians = connect_technicians
        self._psk_files: dict[int, Path] = {}
        self._owned = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def build(self) -> None:
        if netns.list_namespaces(self.topo.prefix):
            raise RuntimeError(f"namespaces with prefix {self.topo.prefix} exist already")
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=False)  # claims the prefix, or fails
        self._owned = True
        self.state.wg_interfaces = list(self.topo.wg_interfaces)
        self.state.save()
        try:
            topology.build(self.topo, self.state.namespaces)
        finally:
            self.state.save()
        self._start_services()
        technician.write_secret(self.agent_key_file, self.router_keys.private + "\n")
        self.write_desired([])
        if self._start_agent:
            self.start_agent()
            self.wait_applied()
        for tech in self.topo.technicians if self._connect_technicians else ():
            config = technician.write_config(
                tech,
                self.tech_keys[tech.index],
                self.router_keys.public,
                self.topo.endpoint,
                (self.grant("thermostat:tcp/443"),),
                self.run_dir,
            )
            technician.connect(tech, config, self.router_keys.public)

    def close(self) -> list[str]:
        """Stop the agent, let it remove its table and interface, then remove the rest.

        Does nothing if this instance never claimed its prefix (another lab holds it).
        """
        if not self._owned:
            return []
        self.stop_agent(signal.SIGTERM)
        if netns.namespace_exists(self.topo.router):
            self.agent_teardown(check=False)
        problems = remove_leftovers(self.state)
        for problem in problems:
            print(f"lab {self.topo.prefix}: cleanup: {problem}", file=sys.stderr)
        return problems

    # ----------------------------------------------------------------- files
    @property
    def desired_file(self) -> Path:
        return self.run_dir / "desired.json"

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def agent_key_file(self) -> Path:
        return self.run_dir / "agent.key"

    @property
    def agent_log(self) -> Path:
        return self.run_dir / "agent.log"

    def service_log(self, host: str) -> Path:
        return self.run_dir / f"{host}.arrivals"

    # ----------------------------------------------------------------- services
    def _start_services(self) -> None:
        hosts: list[tuple[str, str, tuple[Service, ...]]] = [
            (d.name, self.topo.device_ns(d), d.services) for d in self.topo.devices
        ]
        hosts.append(("router", self.topo.router, ROUTER_SERVICES))
        if self.topo.homes == 2:
            lock = topology.HOME2_DEVICE
            hosts.append((lock.name, self.topo.device_ns(lock), lock.services))
        hosts.append(("internet", self.topo.host, topology.INTERNET_SERVICES))
        for tech in self.topo.technicians:
            hosts.append((tech.name, tech.namespace, topology.TECHNICIAN_SERVICES))
        for name, ns, svcs in hosts:
            argv = [sys.executable, "-m", "lab.services", "--name", name]
            argv += ["--log", str(self.service_log(name))]
            argv += ["--max-seconds", str(SERVICE_LIFETIME_S)]
            for svc in svcs:
                argv += [f"--{svc.proto}", str(svc.ports)]
            self.spawn(ns, argv, f"services {name}", self.run_dir / f"{name}.out")
        deadline = time.monotonic() + READY_TIMEOUT_S
        for name, _, _ in hosts:
            while not services.is_ready(self.service_log(name)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab service {name} did not start; see {self.run_dir}")
                time.sleep(0.02)

    def spawn(self, ns: str, argv: list[str], what: str, out: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in namespace ``ns``, recorded so cleanup stops it even after a crash."""
        with out.open("ab") as log:
            popen = subprocess.Popen(
                netns.exec_argv(ns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the terminal of `ztb lab up`
            )
        self.state.track(popen.pid, what)
        return popen

    def arrivals(self, host: str, since: float = 0.0) -> list[services.Arrival]:
        return services.read_arrivals(self.service_log(host), since)

    # ----------------------------------------------------------------- agent
    def start_agent(self, state_dir: Path | None = None) -> Process:
        """File mode (``desired.json``) by default; with ``state_dir`` (made by ``ztb agent
        enroll``) the agent follows the broker instead."""
        if self.agent_running():
            raise AgentError("the agent is already running")
        if state_dir is not None:
            argv = ztb_argv(
                "agent", "run", "--state-dir", str(state_dir),
                "--status-file", str(self.status_file), "--report-interval", "2",
            )  # fmt: skip
        else:
            argv = ztb_argv(
                "agent", "run",
                "--desired-state", str(self.desired_file),
                "--interface", self.topo.router_wg,
                "--listen-port", str(WG_PORT),
                "--private-key-file", str(self.agent_key_file),
                "--status-file", str(self.status_file),
                "--poll-interval", "0.2",
            )  # fmt: skip
        self._agent_popen = self.spawn(self.topo.router, argv, "agent", self.agent_log)
        self.agent = self.state.processes[-1]
        return self.agent

    def agent_running(self) -> bool:
        return self._agent_popen is not None and self._agent_popen.poll() is None

    def stop_agent(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL (no chance to clean up, like a crash or OOM) by default."""
        if self._agent_popen is None or self.agent is None:
            return
        if sig == signal.SIGKILL:
            if self._agent_popen.poll() is None:
                self._agent_popen.kill()
        else:
            stop_process(self.agent)
        try:
            self._agent_popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._agent_popen.kill()
            self._agent_popen.wait(timeout=5)
        self._agent_popen = None

    def agent_teardown(self, check: bool = True) -> None:
        netns.run_in(
            self.topo.router,
            ztb_argv("agent", "teardown", "--interface", self.topo.router_wg),
            check=check,
        )

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data

    def wait_applied(
        self, revision: int | None = None, timeout: float = APPLY_TIMEOUT_S
    ) -> dict[str, Any]:
        """Wait until the running agent reports ``revision`` (default: the last written).

        A status left behind by an earlier agent process does not count.
        """
        want = self.revision if revision is None else revision
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.agent_running() or self.agent is None:
                raise AgentError(f"agent not running at revision {want}: {self._agent_tail()}")
            status = self.status()
            if status.get("pid") == self.agent.pid and int(status.get("revision", -1)) >= want:
                return status
            time.sleep(0.02)
        raise AgentError(f"agent missed revision {want} for {timeout}s: {self._agent_tail()}")

    def _agent_tail(self) -> str:
        try:
            lines = self.agent_log.read_text().strip().splitlines()
        except OSError:
            return "no agent log"
        return " | ".join(lines[-3:]) or "agent log empty"

    # ----------------------------------------------------------------- desired state
    def tech(self, index: int) -> Technician:
        return self.topo.technicians[index - 1]

    def grant(self, spec: str) -> Grant:
        """``thermostat:tcp/443`` -> a Grant on the lab device's address (``@6`` for IPv6)."""
        text, _, family = spec.partition("@")
        parsed = GrantSpec.parse(text)
        device = self.topo.device(parsed.device)
        address = device.ip6 if family == "6" else device.ip
        return Grant(address, parsed.proto, parsed.ports, device.name)

    def session(
        self,
        tech: Technician,
        grants: Sequence[str],
        expires_in: float = 600.0,
        session_id: str | None = None,
    ) -> LiveSession:
        psk = str(WireguardKey.generate())
        path = self.run_dir / f"{tech.name}.psk"
        technician.write_secret(path, psk + "\n")
        self._psk_files[tech.index] = path
        return LiveSession(
            session_id=session_id or f"{tech.name}-{secrets.token_hex(4)}",
            public_key=self.tech_keys[tech.index].public,
            tunnel_ip=tech.tunnel_ip,
            tunnel_ip6=tech.tunnel_ip6,
            grants=tuple(self.grant(g) for g in grants),
            expires_in=expires_in,
            preshared_key=psk,
        )

    def write_desired(self, sessions: Sequence[LiveSession]) -> DesiredState:
        """Write the next revision atomically (tmp + rename); returns the document."""
        self.revision += 1
        desired = DesiredState(
            home_id=f"lab-{self.topo.prefix}",
            revision=self.revision,
            network=self.topo.home_network,
            sessions=tuple(sessions),
        )
        write_atomic(self.desired_file, desired.to_json(), 0o600, durable=False)
        self.desired = desired
        return desired

    def apply(self, sessions: Sequence[LiveSession]) -> dict[str, Any]:
        """Write the sessions as the next revision, wait for the agent, reconnect technicians."""
        self.write_desired(sessions)
        status = self.wait_applied()
        for session in sessions:
            self.rejoin(self._tech_of(session))
        return status

    def rejoin(self, tech: Technician) -> None:
        technician.rejoin(
            tech, self.router_keys.public, self.topo.endpoint, self._psk_files.get(tech.index)
        )

    def _tech_of(self, session: LiveSession) -> Technician:
        for tech in self.topo.technicians:
            if self.tech_keys[tech.index].public == session.public_key:
                return tech
        raise KeyError(f"session {session.session_id} belongs to no lab technician")

    # ----------------------------------------------------------------- inspection
    def target(self, device: str, proto: str, port: int, family: int = 4) -> Target:
        dev = self.topo.device(device)
        return Target(str(dev.ip6 if family == 6 else dev.ip), proto, port)

    def router_peers(self) -> dict[str, list[str]]:
        """Router WireGuard peers: public key -> allowed IPs (from ``wg show dump``)."""
        out = netns.run_in(self.topo.router, ["wg", "show", self.topo.router_wg, "dump"]).stdout
        peers = {}
        for line in out.strip().splitlines()[1:]:
            fields = line.split("\t")
            peers[fields[0]] = [] if fields[3] == "(none)" else fields[3].split(",")
        return peers

    def nft(self, *args: str) -> dict[str, Any]:
        out = netns.run_in(self.topo.router, ["nft", "-j", *args]).stdout
        data: dict[str, Any] = json.loads(out)
        return data

    def nft_table_exists(self, table: str, family: str = "inet") -> bool:
        argv = ["nft", "list", "table", family, table]
        return netns.run_in(self.topo.router, argv, check=False).returncode == 0

    def grant_elements(self) -> dict[ElementKey, KernelElement]:
        return parse_set_listing(self.nft("list", "table", "inet", "ztb"))

    def kernel_expiry_times(self) -> list[float]:
        """When each grant element expires, as Unix times, from the kernel's own countdown.

        The text listing has millisecond precision (``expires 3s912ms``); JSON has seconds.
        """
        before = time.time()
        text = netns.run_in(self.topo.router, ["nft", "list", "table", "inet", "ztb"]).stdout
        return [before + _duration_s(match) for match in _EXPIRES.findall(text)]

    def router_tunnel_addresses(self) -> list[str]:
        out = netns.run_in(
            self.topo.router, ["ip", "-j", "addr", "show", "dev", self.topo.router_wg]
        ).stdout
        return [
            info["local"]
            for link in json.loads(out)
            for info in link.get("addr_info", [])
            if info.get("scope") == "global"
        ]

    def nft_load(self, ruleset: str) -> None:
        """Load nft text in the router namespace (e.g. a pre-existing ``table inet fw4``)."""
        subprocess.run(
            netns.exec_argv(self.topo.router, ["nft", "-f", "-"]),
            input=ruleset,
            text=True,
            check=True,
            capture_output=True,
            timeout=10,
        )
