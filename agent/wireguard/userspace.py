"""wireguard-go behind the WireGuard backend protocol, reached through its UAPI socket.

wireguard-go is started as its own daemon (it forks and detaches), so killing the agent,
even with SIGKILL, leaves the tunnel and its peers up; a restarted agent reuses the running
daemon through the socket. Deleting the link makes that daemon exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from . import uapi
from .backend import InterfaceConfig, PeerConfig, PeerState, WireGuardError, key_to_hex
from .link import bring_up, delete_link, link_kind, validate_ifname

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_POLL_S = 0.02


def _socket_alive(path: Path) -> bool:
    """Something listens on the UAPI socket (a file left by a dead daemon refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _is_wireguard_go(pid: int) -> bool:
    """True while ``pid`` is a live wireguard-go (a zombie waiting to be reaped is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, _, rest = stat.partition(" (")[2].rpartition(") ")
    return comm == "wireguard-go" and not rest.startswith("Z")


def daemon_pid(name: str) -> int | None:
    """The wireguard-go serving ``name`` in this network namespace.

    Found by command line and namespace: the socket's SO_PEERCRED names the parent that
    created it before forking, which has already exited.
    """
    own_netns = Path("/proc/self/ns/net").stat().st_ino
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            netns = (entry / "ns" / "net").stat().st_ino
        except OSError:
            continue
        is_ours = argv[1:2] == [name.encode()] and netns == own_netns
        if is_ours and Path(argv[0].decode(errors="replace")).name == "wireguard-go":
            pid = int(entry.name)
            if _is_wireguard_go(pid):
                return pid
    return None


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(_POLL_S)
    return condition()


class UserspaceWireGuard:
    kind = "userspace"

    def __init__(self, name: str, binary: str = "wireguard-go") -> None:
        self.name = validate_ifname(name)
        self._binary = binary
        self._socket = uapi.socket_path(name)

    def _running(self) -> bool:
        return link_kind(self.name) is not None and _socket_alive(self._socket)

    def _start(self) -> None:
        kind = link_kind(self.name)
        if kind is not None:
            raise WireGuardError(
                f"interface {self.name} exists ({kind or 'unknown kind'}) without a "
                f"wireguard-go socket at {self._socket}; refusing to touch it"
            )
        if self._socket.exists() and not _socket_alive(self._socket):
            self._socket.unlink()  # left behind by a daemon that died
        env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
        done = subprocess.run(
            [self._binary, self.name],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            start_new_session=True,  # its own session: the agent's signals never reach it
            check=False,
        )
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1:] or ["failed"]
            raise WireGuardError(f"wireguard-go {self.name}: {detail[0]}")
        if not _wait_until(self._running, _START_TIMEOUT_S):
            raise WireGuardError(f"wireguard-go {self.name}: socket {self._socket} never came up")

    def ensure_interface(self, config: InterfaceConfig) -> None:
        if not self._running():
            self._start()
        have = uapi.device_settings(uapi.get(self._socket))
        lines = []
        if have.get("private_key") != key_to_hex(config.private_key):
            lines.append(f"private_key={key_to_hex(config.private_key)}")
        if have.get("listen_port") != str(config.listen_port):
            lines.append(f"listen_port={config.listen_port}")
        if lines:
            uapi.set_lines(self._socket, lines, "interface settings")
        bring_up(self.name, config.addresses, config.routes)

    def list_peers(self) -> list[PeerState]:
        if not self._socket.exists():
            return []
        return uapi.parse_peers(uapi.get(self._socket))

    def set_peer(self, peer: PeerConfig) -> None:
        uapi.set_lines(self._socket, uapi.peer_lines(peer), f"set peer {peer.public_key}")

    def remove_peer(self, public_key: str) -> None:
        lines = uapi.remove_peer_lines(public_key)
        uapi.set_lines(self._socket, lines, f"remove peer {public_key}")

    def delete_interface(self) -> bool:
        """Delete the link; its wireguard-go then exits (SIGTERM by PID if it lingers)."""
        pid = daemon_pid(self.name)
        existed = delete_link(self.name)
        if pid is not None:
            existed = True
            if not _wait_until(lambda: not _is_wireguard_go(pid), _STOP_TIMEOUT_S):
                os.kill(pid, signal.SIGTERM)
                _wait_until(lambda: not _is_wireguard_go(pid), _STOP_TIMEOUT_S)
        if self._socket.exists() and not _socket_alive(self._socket):
            self._socket.unlink()
        return existed
