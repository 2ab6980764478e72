"""What one lab run started, kept on disk so a crashed run can still be cleaned up.

``/run/ztb-lab/PREFIX/state.json`` lists the run's namespaces, processes (PID plus the
kernel's start time, so a recycled PID is never killed) and WireGuard interfaces.
``remove_leftovers`` undoes all of it and is what both ``Lab.__exit__`` and
``ztb lab down`` call.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ztb.files import write_atomic

from . import netns

RUN_ROOT = Path("/run/ztb-lab")
WG_SOCKET_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    start_time: int
    what: str


@dataclass(slots=True)
class RunState:
    prefix: str
    run_dir: Path
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    wg_interfaces: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.run_dir / "state.json"

    def save(self) -> None:
        data = {
            "prefix": self.prefix,
            "namespaces": self.namespaces,
            "processes": [asdict(p) for p in self.processes],
            "wg_interfaces": self.wg_interfaces,
        }
        write_atomic(self.path, json.dumps(data, indent=2), 0o600, durable=False)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        data = json.loads((run_dir / "state.json").read_text())
        return cls(
            prefix=str(data["prefix"]),
            run_dir=run_dir,
            namespaces=list(data["namespaces"]),
            processes=[Process(**p) for p in data["processes"]],
            wg_interfaces=list(data["wg_interfaces"]),
        )

    def track(self, pid: int, what: str) -> Process:
        process = Process(pid, start_time(pid), what)
        self.processes.append(process)
        self.save()
        return process


def start_time(pid: int) -> int:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_same_process(process: Process) -> bool:
    try:
        return start_time(process.pid) == process.start_time
    except (OSError, IndexError, ValueError):
        return False


def stop_process(process: Process, grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; only if the PID is still that process."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        if not is_same_process(process):
            return
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(process):
            time.sleep(0.02)


def _alive(process: Process) -> bool:
    if not is_same_process(process):
        return False
    try:
        state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":  # our own child: reap it so it is gone, not a zombie
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)
        return False
    return True


def wireguard_go_pids(ifname: str) -> list[int]:
    """wireguard-go daemons serving exactly ``ifname`` (their command line names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_wg = bool(argv) and Path(argv[0].decode(errors="replace")).name == "wireguard-go"
        if is_wg and ifname.encode() in argv[1:]:
            pids.append(int(entry.name))
    return pids


def remove_leftovers(state: RunState) -> list[str]:
    """Stop processes, delete namespaces and sockets; returns what could not be removed."""
    problems: list[str] = []
    for process in reversed(state.processes):
        stop_process(process)
        if _alive(process):
            problems.append(f"process {process.pid} ({process.what}) still running")
    namespaces = sorted({*state.namespaces, *netns.list_namespaces(state.prefix)})
    for name in namespaces:  # a crash may have left processes the state file never saw
        for pid in netns.pids_in(name):
            with contextlib.suppress(OSError, IndexError, ValueError):
                stop_process(Process(pid, start_time(pid), f"process in {name}"))
    for name in namespaces:
        try:
            netns.remove_namespace(name)
        except OSError as exc:
            problems.append(f"namespace {name}: {exc}")
    for ifname in state.wg_interfaces:
        for pid in wireguard_go_pids(ifname):
            try:
                stop_process(Process(pid, start_time(pid), f"wireguard-go {ifname}"))
            except OSError:
                continue
        (WG_SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)
    shutil.rmtree(state.run_dir, ignore_errors=True)
    return problems


def known_runs(root: Path = RUN_ROOT) -> list[RunState]:
    if not root.is_dir():
        return []
    return [RunState.load(d) for d in sorted(root.iterdir()) if (d / "state.json").is_file()]
