"""The agent's real backends and ``ztb agent run`` against the real kernel, each test in
its own network namespace (and its own WireGuard interface name, since wireguard-go's
socket directory is shared by every namespace).

Backend code runs in a child process under ``ip netns exec`` (``_child`` below), so the
test process itself never enters a namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.wireguard.backend import InterfaceConfig, PeerConfig
from agent.wireguard.uapi import socket_path
from netpolicy import AgentReport, nft
from tests.unit.test_agent_reconcile import key, make_session, make_state

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
FW4 = """table inet fw4 {
    chain forward {
        type filter hook forward priority filter; policy accept;
        tcp dport 9999 counter drop
    }
}
"""


def ns_run(ns: str, *argv: str, check: bool = True, **kwargs: Any) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
        **kwargs,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return str(done.stdout)


def ns_call(ns: str, function: Callable[..., Any], *args: str) -> Any:
    """Run ``function(*args)`` of this module in a child inside ``ns``; return its JSON."""
    code = f"import json,sys; from {__name__} import {function.__name__} as f; "
    code += "print(json.dumps(f(*sys.argv[1:])))"
    return json.loads(ns_run(ns, sys.executable, "-c", code, *args).strip().splitlines()[-1])


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"ztbt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def ifname(ns: str) -> Iterator[str]:
    """A machine-unique interface name; its wireguard-go is stopped after the test."""
    name = f"ztb{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        ns_run(
            ns, sys.executable, "-m", "ztb", "agent", "teardown", "--interface", name, check=False
        )
        socket_path(name).unlink(missing_ok=True)


# ---------------------------------------------------------------- nftables backends
def nft_transactions(choice: str) -> dict[str, Any]:
    """In the namespace: skeleton + element, then a failing document, then listings."""
    from agent.nftables.backend import NftError, make_nft

    backend = make_nft(choice)  # type: ignore[arg-type]
    missing = backend.list_table()
    state = make_state(1, make_session(1, 443, 8443))
    wanted = nft.desired_elements(state, {"s1": 300})
    backend.run(nft.table_commands("wgx") + nft.diff_commands(nft.diff_elements({}, wanted)))
    listed = nft.parse_set_listing(backend.list_table())
    gone = next(iter(wanted))
    good_add = nft.diff_commands(nft.diff_elements({}, nft.desired_elements(
        make_state(2, make_session(2, 22)), {"s2": 300})))  # fmt: skip
    bad_delete = {"delete": {"element": {"family": "inet", "table": "ztb", "name": "grants4",
                  "elem": [{"concat": ["100.64.0.99", "192.168.1.10", "tcp", 1]}]}}}  # fmt: skip
    error = ""
    try:
        backend.run([*good_add, bad_delete])
    except NftError as exc:
        error = str(exc)
    after = nft.parse_set_listing(backend.list_table())
    backend.run(nft.diff_commands(nft.diff_elements({gone: listed[gone]}, {})))
    return {
        "kind": backend.kind,
        "missing": missing,
        "listed": sorted((k.tunnel_ip, k.first, v.expires) for k, v in listed.items()),
        "error": error,
        "after": sorted((k.tunnel_ip, k.first) for k in after),
        "final": sorted(k.first for k in nft.parse_set_listing(backend.list_table())),
    }


@pytest.mark.parametrize("choice", ["lib", "binary"])
def test_nft_backend_transactions_are_atomic(ns: str, choice: str) -> None:
    result = ns_call(ns, nft_transactions, choice)
    assert result["kind"] == choice
    assert result["missing"] == {"nftables": []}
    assert [(t, port) for t, port, _ in result["listed"]] == [
        ("100.64.0.2", 443),
        ("100.64.0.2", 8443),
    ]
    assert all(299 <= expires <= 300 for _, _, expires in result["listed"])
    assert "No such file or directory" in result["error"]
    # The good add in the failed document did not happen: all or nothing.
    assert result["after"] == [["100.64.0.2", 443], ["100.64.0.2", 8443]]
    assert result["final"] == [8443]


# ---------------------------------------------------------------- wireguard-go backend
def wireguard_go_steps(ifname: str) -> dict[str, Any]:
    from agent.wireguard.userspace import UserspaceWireGuard, daemon_pid

    backend = UserspaceWireGuard(ifname)
    interface = InterfaceConfig(key(90), 51900, ("100.64.0.1/32",), ("100.64.0.0/24",))
    backend.ensure_interface(interface)
    pid = daemon_pid(ifname)
    backend.ensure_interface(interface)
    backend.set_peer(PeerConfig(key(1), ("100.64.0.2/32",), key(101)))
    backend.set_peer(PeerConfig(key(2), ("100.64.0.3/32",)))
    backend.set_peer(PeerConfig(key(1), ("100.64.0.2/32", "fd00::2/128"), key(101)))
    backend.remove_peer(key(2))
    return {
        "pid": pid,
        "pid_again": daemon_pid(ifname),
        "peers": [
            [p.public_key, list(p.allowed_ips), p.preshared_key] for p in backend.list_peers()
        ],
    }


def wireguard_go_pid(ifname: str) -> int | None:
    from agent.wireguard.userspace import daemon_pid

    return daemon_pid(ifname)


def wg_dump(ns: str, ifname: str) -> list[list[str]]:
    lines = ns_run(ns, "wg", "show", ifname, "dump").strip().splitlines()
    return [line.split("\t") for line in lines[1:]]


def test_wireguard_go_backend_is_incremental_and_outlives_its_process(ns: str, ifname: str) -> None:
    result = ns_call(ns, wireguard_go_steps, ifname)
    assert result["peers"] == [[key(1), ["100.64.0.2/32", "fd00::2/128"], key(101)]]
    assert result["pid"] == result["pid_again"]  # ensure_interface reused the daemon
    # The Python process that started it is gone; the daemon and its peer are not.
    os.kill(result["pid"], 0)
    assert [row[0] for row in wg_dump(ns, ifname)] == [key(1)]
    addr = ns_run(ns, "ip", "-j", "addr", "show", "dev", ifname)
    assert "100.64.0.1" in addr
    assert "100.64.0.0/24" in ns_run(ns, "ip", "route", "show", "dev", ifname)


# ---------------------------------------------------------------- ztb agent run
class AgentProcess:
    def __init__(self, ns: str, ifname: str, tmp: Path) -> None:
        self.ns, self.ifname, self.tmp = ns, ifname, tmp
        self.desired = tmp / "desired.json"
        self.status = tmp / "status.json"
        self.keyfile = tmp / "agent.key"
        self.keyfile.write_text(key(90) + "\n")
        self.keyfile.chmod(0o600)
        self.log = tmp / "agent.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "ztb", "agent", "run"]
        argv += ["--desired-state", str(self.desired), "--interface", self.ifname]
        argv += ["--listen-port", "51901", "--private-key-file", str(self.keyfile)]
        argv += ["--status-file", str(self.status), "--poll-interval", "0.05"]
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.popen is not None
        self.popen.send_signal(sig)
        code = self.popen.wait(timeout=10)
        self.popen = None
        return code

    def write(self, text: str) -> None:
        tmp = self.desired.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.desired)

    def wait_revision(self, revision: int, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status: dict[str, Any] = json.loads(self.status.read_text())
            except (OSError, json.JSONDecodeError):
                status = {}
            if status.get("revision") == revision:
                return status
            assert self.popen is None or self.popen.poll() is None, self.log.read_text()
            time.sleep(0.02)
        raise AssertionError(f"no revision {revision}: {self.log.read_text()[-500:]}")


@pytest.fixture
def agent(ns: str, ifname: str, tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(ns, ifname, tmp_path)
    try:
        yield process
    finally:
        if process.popen is not None and process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(timeout=10)


def test_agent_run_file_mode_end_to_end(ns: str, ifname: str, agent: AgentProcess) -> None:
    ns_run(ns, "nft", "-f", "-", input=FW4)
    fw4_before = ns_run(ns, "nft", "list", "table", "inet", "fw4")
    agent.write(make_state(1, make_session(1, 443), make_session(2, 22, 80)).to_json())
    agent.start()
    status = agent.wait_revision(1)
    assert agent.popen is not None and status["pid"] == agent.popen.pid  # ip netns exec execs
    assert {sid: s["peer"] for sid, s in status["sessions"].items()} == {"s1": True, "s2": True}
    assert len(status["elements"]) == 3
    assert sorted(row[0] for row in wg_dump(ns, ifname)) == sorted([key(1), key(2)])

    # A bad document is logged and changes nothing.
    agent.write("{broken")
    time.sleep(0.3)
    assert "event=bad_desired_state" in agent.log.read_text()
    assert sorted(row[0] for row in wg_dump(ns, ifname)) == sorted([key(1), key(2)])

    # Revoke s2: its elements and peer go, s1 stays.
    agent.write(make_state(2, make_session(1, 443)).to_json())
    status = agent.wait_revision(2)
    assert [row[0] for row in wg_dump(ns, ifname)] == [key(1)]
    assert [e["session_id"] for e in status["elements"]] == ["s1"]
    listing = json.loads(ns_run(ns, "nft", "-j", "list", "table", "inet", "ztb"))
    assert [k.tunnel_ip for k in nft.parse_set_listing(listing)] == ["100.64.0.2"]

    # SIGTERM: a clean exit that leaves enforcement in the kernel.
    assert agent.stop(signal.SIGTERM) == 0
    assert "100.64.0.2" in ns_run(ns, "nft", "list", "set", "inet", "ztb", "grants4")
    assert [row[0] for row in wg_dump(ns, ifname)] == [key(1)]
    assert ns_run(ns, "nft", "list", "table", "inet", "fw4") == fw4_before

    out = ns_run(
        ns, sys.executable, "-m", "ztb", "agent", "teardown", "--interface", ifname, "--json"
    )
    assert json.loads(out) == {
        "interface": ifname,
        "interface_removed": True,
        "table_removed": True,
    }
    assert "ztb" not in ns_run(ns, "nft", "list", "tables")
    assert ns_run(ns, "ip", "link", "show", ifname, check=False) == ""
    assert not socket_path(ifname).exists()
    assert ns_run(ns, "nft", "list", "table", "inet", "fw4") == fw4_before


def test_agent_restart_after_sigkill_reuses_the_tunnel_and_never_extends(
    ns: str, ifname: str, agent: AgentProcess
) -> None:
    agent.write(make_state(1, make_session(1, 443, expires_in=120)).to_json())
    agent.start()
    agent.wait_revision(1)
    daemon = subprocess.run(
        ["ip", "netns", "exec", ns, "wg", "show", ifname, "listen-port"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert daemon == "51901"
    pid = ns_call(ns, wireguard_go_pid, ifname)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(2.2)  # the agent is dead; the kernel's clock runs on
    assert [row[0] for row in wg_dump(ns, ifname)] == [key(1)]  # wireguard-go survived
    agent.status.unlink()
    agent.start()  # same (now stale) document: expires_in still says 120
    status = agent.wait_revision(1)
    assert status["sessions"]["s1"]["peer"] is True
    assert ns_call(ns, wireguard_go_pid, ifname) == pid  # the same daemon, reused
    # The kernel, not the agent's own account, says whether the lifetime was pushed back.
    listing = json.loads(ns_run(ns, "nft", "-j", "list", "set", "inet", "ztb", "grants4"))
    [kernel] = nft.parse_set_listing(listing).values()
    assert 0 < kernel.expires <= 118
    assert "event=start" in agent.log.read_text()


# ---------------------------------------------------------------- final counters
# A small forwarding rig: technician ns --veth "zttun"--> router ns (the agent's table)
# --veth--> LAN ns with the device 192.168.1.10. WireGuard is not under test here (the
# agent gets the fake); the packets, the nft table, its counters and the reads are real.
TUNNEL_IF = "zttun"


@pytest.fixture
def rig(ns: str) -> Iterator[dict[str, str]]:
    tech, lan = f"{ns}-t", f"{ns}-l"
    try:
        for name in (tech, lan):
            subprocess.run(["ip", "netns", "add", name], check=True)
        veth = ["type", "veth", "peer", "name", "eth0", "netns"]
        steps = [
            [ns, "ip", "link", "add", TUNNEL_IF, *veth, tech],
            [ns, "ip", "link", "add", "lan0", *veth, lan],
            [ns, "ip", "addr", "add", "100.64.0.1/24", "dev", TUNNEL_IF],
            [ns, "ip", "addr", "add", "192.168.1.1/24", "dev", "lan0"],
            [tech, "ip", "addr", "add", "100.64.0.2/24", "dev", "eth0"],
            [lan, "ip", "addr", "add", "192.168.1.10/24", "dev", "eth0"],
            *([n, "ip", "link", "set", dev, "up"] for n, dev in [(ns, TUNNEL_IF), (ns, "lan0"),
              (ns, "lo"), (tech, "eth0"), (tech, "lo"), (lan, "eth0"), (lan, "lo")]),
            [tech, "ip", "route", "add", "192.168.1.0/24", "via", "100.64.0.1"],
            [lan, "ip", "route", "add", "100.64.0.0/24", "via", "192.168.1.1"],
            [ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]  # fmt: skip
        for step in steps:
            ns_run(step[0], *step[1:])
        yield {"router": ns, "tech": tech}
    finally:
        for name in (tech, lan):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def knock(tech: str, times: str) -> None:
    """``times`` TCP connection attempts from the technician to the device's closed port."""
    code = (
        "import socket,sys\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    try: socket.create_connection(('192.168.1.10', 443), timeout=1).close()\n"
        "    except OSError: pass\n"
    )
    ns_run(tech, sys.executable, "-c", code, times)


def kernel_counters() -> dict[str, list[int]]:
    listing = json.loads(subprocess.run(
        ["nft", "-j", "list", "table", "inet", "ztb"], capture_output=True, text=True,
        check=True, timeout=10).stdout)  # fmt: skip
    return {k.tunnel_ip: [e.packets, e.bytes] for k, e in nft.parse_set_listing(listing).items()}


def final_counters_steps(choice: str, tech: str, mode: str, tmp: str) -> dict[str, Any]:
    """In the router ns: run the loop, knock, then end the session (revoke or expiry)."""
    import threading

    from agent.desired_file import DesiredStateFile
    from agent.nftables.backend import make_nft
    from agent.reconcile import InterfaceSpec, Reconciler
    from agent.runner import Runner
    from tests.agent_fakes import FakeWireGuard

    desired = Path(tmp) / "desired.json"
    sent: list[AgentReport] = []
    backend = make_nft(choice)  # type: ignore[arg-type]
    reconciler = Reconciler(FakeWireGuard(), backend, InterfaceSpec(TUNNEL_IF, key(90), 51999))
    source = DesiredStateFile(desired)
    runner = Runner(reconciler, source, threading.Event(), poll_interval=0.02, reporter=sent.append)

    def step_until(done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            runner.step()

    expires = 3.5 if mode == "expiry" else 600.0
    desired.write_text(make_state(1, make_session(1, 443, expires_in=expires)).to_json())
    step_until(lambda: reconciler.desired is not None, 5)
    knock(tech, "38")
    before = kernel_counters()
    started = time.monotonic()
    if mode == "revoke":
        desired.write_text(make_state(2).to_json())
        step_until(lambda: reconciler.desired is not None and reconciler.desired.revision == 2, 5)
    else:
        step_until(lambda: reconciler.next_expiry() is None, 6)
    finals = [e for report in sent for e in report.elements if e.final]
    return {
        "before": before,
        "after": kernel_counters(),
        "finals": [[e.session_id, str(e.ports), e.packets, e.bytes] for e in finals],
        "seconds": time.monotonic() - started,
    }


@pytest.mark.parametrize(("choice", "mode"), [("lib", "revoke"), ("binary", "revoke"),
                                              ("lib", "expiry")])  # fmt: skip
def test_final_counters_are_read_before_the_elements_go(
    rig: dict[str, str], choice: str, mode: str, tmp_path: Path
) -> None:
    result = ns_call(rig["router"], final_counters_steps, choice, rig["tech"], mode, str(tmp_path))
    packets, octets = result["before"]["100.64.0.2"]
    assert packets >= 38  # one SYN per attempt: the device's port is closed (RST)
    assert result["after"] == {}  # the element is gone, and its counters with it
    # Reported as final, equal to what the kernel counted before the delete.
    assert result["finals"][-1] == ["s1", "443", packets, octets]
    if mode == "expiry":  # read before the kernel timeout, and again by the expiry timer
        assert len(result["finals"]) == 2 and result["seconds"] < 4


def read_exact_keys(choice: str) -> dict[str, Any]:
    """In the namespace: single, range and IPv6 elements; read them plus keys not there."""
    from agent.nftables.backend import make_nft
    from netpolicy.nft import ElementDiff, ElementKey

    backend = make_nft(choice)  # type: ignore[arg-type]
    present = [
        ElementKey(4, "100.64.0.2", "192.168.1.10", "tcp", 443, 443),
        ElementKey(4, "100.64.0.2", "192.168.1.10", "udp", 8000, 8100),
        ElementKey(6, "fd00::2", "fd01::10", "tcp", 22, 22),
    ]
    absent = [
        ElementKey(4, "100.64.0.9", "192.168.1.10", "tcp", 443, 443),
        ElementKey(4, "100.64.0.2", "192.168.1.10", "udp", 8000, 8050),  # inside the range
    ]
    backend.run(nft.table_commands("wgx") + nft.diff_commands(
        ElementDiff(dict.fromkeys(present, 300), frozenset())))  # fmt: skip
    read = backend.read_elements([*absent, *present])
    return {
        "read": sorted([k.family, k.tunnel_ip, k.first, k.last, e.expires] for k, e in read.items())
    }


@pytest.mark.parametrize("choice", ["lib", "binary"])
def test_read_elements_returns_exactly_the_keys_the_kernel_holds(ns: str, choice: str) -> None:
    result = ns_call(ns, read_exact_keys, choice)
    assert [row[:4] for row in result["read"]] == [
        [4, "100.64.0.2", 443, 443],
        [4, "100.64.0.2", 8000, 8100],
        [6, "fd00::2", 22, 22],
    ]
    assert all(298 <= row[4] <= 300 for row in result["read"])
