"""Rows measured on the real agent, most of them through the whole running product.

Revocation latency, time to access and the agent's memory in broker mode share one
product run (``lab.bench.product``: broker over HTTPS, enrolled agent on ``--state-dir``,
people on the API): the lab is built once and its result kept for the other rows of the
same benchmark run. The agent's memory in file mode runs on its own in one namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab import latency, netns

from . import rig, workload
from .modes import Mode
from .product import Product, running
from .results import Figure, Measurement, Ratio
from .stats import Summary

AGENT_SESSIONS = 100
AGENT_READY_TIMEOUT_S = 60.0
AGENT_STEADY_S = 3.0
AGENT_RSS_GOAL_MB = 30.0
REVOKE_P99_GOAL_MS = 100.0
ACCESS_P50_GOAL_MS = 500.0
OPENERS = 8  # concurrent request+approve calls when loading the agent with sessions
SESSION_S = 600


@dataclass(frozen=True, slots=True)
class Memory:
    sessions: int
    hwm_mb: float
    rss_mb: float
    applied_s: float


@dataclass(frozen=True, slots=True)
class ProductRun:
    setup_s: float
    cycles: list[latency.Cycle]
    agent: Memory


_RUNS: dict[tuple[Mode, str], ProductRun | Exception] = {}


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _wait_elements(
    status: Callable[[], dict[str, object]], want: int, alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the agent exited before applying every session")
        elements = status().get("elements", [])
        if isinstance(elements, list) and len(elements) >= want:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the agent did not apply {want} sessions in {AGENT_READY_TIMEOUT_S:g} s")


def _open_session(product: Product) -> None:
    product.approve(product.request(latency.GRANTS, SESSION_S))


def _broker_agent_memory(product: Product, sessions: int, steady_s: float) -> Memory:
    """Approve ``sessions`` sessions (one grant each), wait until the agent holds them all,
    let it idle, then read its memory."""
    started = time.monotonic()
    with ThreadPoolExecutor(OPENERS) as pool:
        list(pool.map(lambda _: _open_session(product), range(sessions)))
    lab = product.lab
    # each session holds two grants (thermostat tcp/443, camera udp/5000)
    _wait_elements(lab.status, 2 * sessions, lab.agent_running)
    applied_s = time.monotonic() - started
    time.sleep(steady_s)
    assert lab.agent is not None
    pid = lab.agent.pid
    return Memory(
        sessions, _status_kb(pid, "VmHWM") / 1024, _status_kb(pid, "VmRSS") / 1024, applied_s
    )


def _product_run(mode: Mode, prefix: str) -> ProductRun:
    """Access cycles, then the agent loaded with sessions: once per benchmark run."""
    key = (mode, prefix)
    if key not in _RUNS:
        try:
            _RUNS[key] = _run_product(mode, f"{prefix}e")
        except Exception as exc:  # every row that needs the run reports the same failure
            _RUNS[key] = exc
    run = _RUNS[key]
    if isinstance(run, Exception):
        raise run
    return run


def _run_product(mode: Mode, prefix: str) -> ProductRun:
    started = time.monotonic()
    with running(prefix) as product:
        setup_s = time.monotonic() - started
        cycles = latency.measure(product, mode.access_cycles, mode.access_seconds)
        memory = _broker_agent_memory(product, mode.broker_agent_sessions, mode.rss_steady_s)
    return ProductRun(setup_s, cycles, memory)


def _ms(values: list[float]) -> Summary:
    return Summary.of(values).scaled(1e3)


def _outliers(
    steps: Sequence[dict[str, float]], total: str, over_s: float
) -> list[dict[str, float]]:
    """Every step (ms) of the trials whose ``total`` is over ``over_s``, so a tail can be
    explained."""
    return [
        {"trial": index, **{k: round(v * 1e3, 1) for k, v in trial.items()}}
        for index, trial in enumerate(steps)
        if trial[total] > over_s
    ]


def _setup(run: ProductRun) -> dict[str, object]:
    return {
        "product": "ztb broker serve (HTTPS, SQLite) + ztb agent run --state-dir (mTLS "
        "long-poll, wireguard-go, libnftables), each in its own lab namespace",
        "api_calls": "ztb.client.http.ZtbClient (httpx) from the benchmark process, "
        "socket opened in the caller's namespace (homeowner: internet host; technician: "
        "own namespace); no CLI start-up is timed",
        "grants": list(latency.GRANTS),
        "lab_setup_s": round(run.setup_s, 1),
    }


def revocation_latency(mode: Mode, prefix: str) -> Measurement:
    run = _product_run(mode, prefix)
    steps = [latency.after(c.closing, c.closing.call_returned) for c in run.cycles]
    m = Measurement("revocation_latency", "Revocation latency (revoke API -> first drop)")
    m.setup = _setup(run) | {
        "flow": f"UDP to camera udp/5000 every {latency.FLOW_PERIOD_S * 1e3:g} ms through "
        "the tunnel; arrivals timestamped by the camera's lab service",
        "first_drop": "send time of the datagram after the last one that reached the camera",
        "zero": "the revoke API call (POST /v1/sessions/ID/revoke over HTTPS) returned",
        "trials_over_goal_ms": _outliers(steps, "first_drop", REVOKE_P99_GOAL_MS / 1e3),
    }

    def ms(name: str) -> Summary:
        return _ms([step[name] for step in steps])

    to_drop = ms("first_drop")
    m.figures += [
        Figure("revoke returned -> first dropped datagram", "ms", to_drop),
        Figure("revoke returned -> last datagram at the device", "ms", ms("last_arrival")),
        Figure("revoke returned -> agent woken (long-poll)", "ms", ms("agent_woken"),
               note="< 0: before the answer arrived"),
        Figure("revoke returned -> agent applied", "ms", ms("agent_applied")),
        Figure("revoke API call (request to answer)", "ms",
               _ms([-s["call_started"] for s in steps])),
        Figure("revoke call started -> first dropped datagram", "ms",
               _ms([s["first_drop"] - s["call_started"] for s in steps])),
        Figure("broker's record of the revoke -> first dropped datagram", "ms",
               _ms([c.closing.to_drop for c in run.cycles])),
    ]  # fmt: skip
    m.ratios.append(Ratio("revocation latency p99", to_drop.p99, "ms", "<=", REVOKE_P99_GOAL_MS))
    return m


def time_to_access(mode: Mode, prefix: str) -> Measurement:
    run = _product_run(mode, prefix)
    steps = [latency.after(c.opening, c.opening.call_returned) for c in run.cycles]
    m = Measurement("time_to_access", "Time to access (approve API -> first TCP connect)")
    m.setup = _setup(run) | {
        "zero": "the approve API call (POST /v1/sessions/ID/approve over HTTPS) returned",
        "technician": "GET /v1/sessions/ID/wg-quick, fill in the locally kept private key, "
        "stock `wg-quick up` (wireguard-go), then TCP connects to thermostat tcp/443 "
        "(0.25 s timeout, 20 ms apart) until one is answered",
        "agent_times": "from the agent's own log (ts= in ms); they overlap the technician's steps",
        "trials_over_1s_ms": _outliers(steps, "connected", 1.0),
    }

    def ms(name: str) -> Summary:
        return _ms([step[name] for step in steps])

    total = ms("connected")
    m.figures += [
        Figure("approve returned -> first TCP connect answered", "ms", total),
        Figure("approve API call (request to answer)", "ms",
               _ms([-s["call_started"] for s in steps])),
        Figure("  agent woken (after approve returned)", "ms", ms("agent_woken"),
               note="< 0: before the answer arrived"),
        Figure("  agent applied peer + elements (after approve returned)", "ms",
               ms("agent_applied")),
        Figure("  technician: config fetch (API + file)", "ms", ms("configured")),
        Figure("  technician: wg-quick up", "ms",
               _ms([s["tunnel_up"] - s["configured"] for s in steps])),
        Figure("  technician: handshake + first connect", "ms",
               _ms([s["connected"] - s["tunnel_up"] for s in steps])),
        Figure("broker's record of the approval -> first TCP connect answered", "ms",
               _ms([c.opening.to_connect for c in run.cycles])),
    ]  # fmt: skip
    m.ratios.append(Ratio("time to access p50", total.median, "ms", "<=", ACCESS_P50_GOAL_MS))
    return m


def _wait_applied(status: Path, proc: subprocess.Popen[bytes]) -> None:
    def read() -> dict[str, object]:
        if not status.exists():
            return {}
        data: dict[str, object] = json.loads(status.read_text())
        return data

    _wait_elements(read, AGENT_SESSIONS, lambda: proc.poll() is None)


def _file_mode_memory(prefix: str) -> Memory:
    """``ztb agent run --desired-state`` enforcing 100 sessions in its own namespace."""
    interface = f"wg{prefix}a"
    with rig.namespace(f"{prefix}-agent") as ns, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = work / "agent.key"
        key.write_text(
            subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        )
        key.chmod(0o600)
        desired = work / "desired.json"
        desired.write_text(workload.home(AGENT_SESSIONS).to_json())
        status = work / "status.json"
        argv = [sys.executable, "-m", "ztb", "agent", "run", "--desired-state", str(desired),
                "--interface", interface, "--listen-port", "51899", "--private-key-file",
                str(key), "--status-file", str(status), "--wireguard", "userspace"]  # fmt: skip
        log = (work / "agent.log").open("wb")
        proc = subprocess.Popen(netns.exec_argv(ns, argv), stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            _wait_applied(status, proc)
            ready_s = time.monotonic() - started
            time.sleep(AGENT_STEADY_S)
            hwm_mb = _status_kb(proc.pid, "VmHWM") / 1024
            rss_mb = _status_kb(proc.pid, "VmRSS") / 1024
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.close()
            teardown = [sys.executable, "-m", "ztb", "agent", "teardown", "--interface",
                        interface, "--wireguard", "userspace"]  # fmt: skip
            netns.run_in(ns, teardown, timeout=30, check=False)
    return Memory(AGENT_SESSIONS, hwm_mb, rss_mb, ready_s)


def agent_rss(mode: Mode, prefix: str) -> Measurement:
    """Max RSS (VmHWM) of ``ztb agent run`` with live sessions, in file mode and in broker
    mode (wireguard-go's own memory is a separate process and not included)."""
    m = Measurement("agent_rss", "Agent memory")
    file_mode = _file_mode_memory(prefix)
    broker = _product_run(mode, prefix).agent
    m.setup = {
        "file_mode": "ztb agent run --desired-state FILE, wireguard-go, libnftables; sampled "
        f"{AGENT_STEADY_S:g} s after the status file showed every element",
        "broker_mode": "ztb agent run --state-dir (mTLS long-poll to the lab broker) after "
        "the access cycles; sessions approved over the API, one revision each; sampled "
        f"{mode.rss_steady_s:g} s after the status file showed every element",
    }
    for label, mem in (("file mode", file_mode), ("broker mode", broker)):
        n = mem.sessions
        m.figures += [
            Figure(f"{label}, {n} sessions: max RSS (VmHWM)", "MB", Summary.of([mem.hwm_mb])),
            Figure(f"{label}, {n} sessions: RSS at steady state", "MB", Summary.of([mem.rss_mb])),
            Figure(f"{label}, {n} sessions: until all applied", "s", Summary.of([mem.applied_s])),
        ]
        m.ratios.append(
            Ratio(
                f"agent max RSS, {label}, {n} sessions", mem.hwm_mb, "MB", "<=", AGENT_RSS_GOAL_MB
            )
        )
    return m
