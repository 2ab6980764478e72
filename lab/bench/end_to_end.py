"""Rows that need the real agent (and, for most, the broker): agent RSS, and the
broker-driven rows, which report "not measured" with the reason until their driver
exists. None of them ever prints a number it did not measure.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import netns

from . import rig, workload
from .modes import Mode
from .results import Figure, Measurement, Ratio
from .stats import Summary

AGENT_SESSIONS = 100
AGENT_READY_TIMEOUT_S = 30.0
AGENT_STEADY_S = 3.0
AGENT_RSS_GOAL_MB = 30.0


def _agent_has_broker_mode() -> str | None:
    """Why the broker-driven rows cannot run yet, or None when the pieces are there."""
    try:
        from agent import cli
    except ImportError as exc:
        return f"agent CLI does not import ({exc})"
    params = inspect.signature(cli.run).parameters
    if "state_dir" not in params:
        return (
            "`ztb agent run` has only file mode (--desired-state) so far; the broker "
            "long-poll (--state-dir after `ztb agent enroll`) is not wired in"
        )
    return None


def _not_measured(key: str, title: str, needs: str) -> Measurement:
    missing = _agent_has_broker_mode()
    why = missing or "broker and agent are ready, but this end-to-end driver is not written yet"
    return Measurement(key, title, status="not measured", why=why, setup={"needs": needs})


def revocation_latency(_mode: Mode, _prefix: str) -> Measurement:
    return _not_measured(
        "revocation_latency",
        "Revocation latency",
        "revoke API call -> agent long-poll wake -> first dropped packet",
    )


def time_to_access(_mode: Mode, _prefix: str) -> Measurement:
    return _not_measured(
        "time_to_access",
        "Time to access",
        "approve -> agent applies -> first TCP connect through WireGuard (incl. handshake)",
    )


def broker_capacity(_mode: Mode, _prefix: str) -> Measurement:
    return _not_measured(
        "broker_capacity",
        "Broker capacity",
        "session lifecycles/s, fan-out to 1,000 long-polling agents, broker RSS",
    )


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _wait_applied(status: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode} before applying")
        if status.exists():
            report = json.loads(status.read_text())
            if len(report.get("elements", [])) >= AGENT_SESSIONS:
                return
        time.sleep(0.1)
    raise RuntimeError(f"agent did not apply {AGENT_SESSIONS} sessions in time")


def agent_rss(_mode: Mode, prefix: str) -> Measurement:
    """Max RSS (VmHWM) of ``ztb agent run`` enforcing 100 live sessions (file mode,
    wireguard-go; the wireguard-go daemon's own memory is a separate process)."""
    m = Measurement("agent_rss", f"Agent memory, {AGENT_SESSIONS} live sessions")
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
    m.setup = {
        "agent": "ztb agent run --desired-state (file mode), wireguard-go, libnftables",
        "sessions": AGENT_SESSIONS,
        "sampled": f"{AGENT_STEADY_S:g} s after the status file showed every element",
    }
    m.figures += [
        Figure("agent max RSS (VmHWM)", "MB", Summary.of([hwm_mb])),
        Figure("agent RSS at steady state (VmRSS)", "MB", Summary.of([rss_mb])),
        Figure("start to all sessions applied", "s", Summary.of([ready_s])),
    ]
    m.ratios.append(Ratio("agent max RSS, 100 sessions", hwm_mb, "MB", "<=", AGENT_RSS_GOAL_MB))
    return m
