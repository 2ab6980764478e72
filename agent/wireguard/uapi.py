"""The wireguard-go cross-platform UAPI: ``get=1`` and incremental ``set=1`` messages.

Written here instead of using ``wireguard_tools.set_config``, which replaces every peer,
writes ``endpoint=None:None`` for peers without an endpoint and sends the PSK in base64
where UAPI wants hex. Protocol: https://www.wireguard.com/xplatform/
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from .backend import PeerConfig, PeerState, WireGuardError, canonical_ips, key_from_hex, key_to_hex

SOCKET_DIR = Path("/var/run/wireguard")
_TIMEOUT_S = 10.0
_MAX_REPLY = 64 * 1024 * 1024


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def _exchange(path: Path, request: str) -> list[tuple[str, str]]:
    """Send one request, read the reply up to its blank line, as ``(key, value)`` pairs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT_S)
        try:
            sock.connect(str(path))
            sock.sendall(request.encode())
            reply = b""
            while not reply.endswith(b"\n\n") and reply != b"\n":
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if len(reply) > _MAX_REPLY:
                    raise WireGuardError(f"{path}: reply too large")
        except OSError as exc:
            raise WireGuardError(f"{path}: {exc.strerror or exc}") from None
    pairs = []
    for line in reply.decode().splitlines():
        if line:
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def _check_errno(path: Path, pairs: list[tuple[str, str]], what: str) -> None:
    errno = next((value for key, value in pairs if key == "errno"), None)
    if errno is None:
        raise WireGuardError(f"{path}: {what}: no reply")
    if errno != "0":
        raise WireGuardError(f"{path}: {what} failed with errno {errno}")


def get(path: Path) -> list[tuple[str, str]]:
    pairs = _exchange(path, "get=1\n\n")
    _check_errno(path, pairs, "get")
    return pairs


def set_lines(path: Path, lines: Sequence[str], what: str) -> None:
    """One ``set=1`` message: wireguard-go applies it under one device lock."""
    pairs = _exchange(path, "set=1\n" + "".join(f"{line}\n" for line in lines) + "\n")
    _check_errno(path, pairs, what)


def device_settings(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Interface-level keys (``private_key``, ``listen_port``...) before the first peer."""
    settings: dict[str, str] = {}
    for key, value in pairs:
        if key == "public_key":
            break
        settings[key] = value
    return settings


def parse_peers(pairs: list[tuple[str, str]]) -> list[PeerState]:
    """Peers of a ``get=1`` reply; each ``public_key`` line starts a new peer."""
    peers: list[PeerState] = []
    current: dict[str, str] | None = None
    allowed: list[str] = []

    def flush() -> None:
        if current is not None:
            handshake = int(current.get("last_handshake_time_sec", "0")) + (
                int(current.get("last_handshake_time_nsec", "0")) / 1e9
            )
            peers.append(
                PeerState(
                    public_key=str(key_from_hex(current["public_key"])),
                    allowed_ips=canonical_ips(allowed),
                    preshared_key=key_from_hex(current.get("preshared_key", "00" * 32)),
                    keepalive_s=int(current.get("persistent_keepalive_interval", "0")),
                    endpoint=current.get("endpoint"),
                    last_handshake=handshake,
                    rx_bytes=int(current.get("rx_bytes", "0")),
                    tx_bytes=int(current.get("tx_bytes", "0")),
                )
            )

    for key, value in pairs:
        if key == "public_key":
            flush()
            current, allowed = {"public_key": value}, []
        elif current is None:
            continue
        elif key == "allowed_ip":
            allowed.append(value)
        else:
            current[key] = value
    flush()
    return peers


def peer_lines(peer: PeerConfig) -> list[str]:
    """Add or update one peer; the zero PSK clears one, allowed-ips are replaced."""
    psk = peer.preshared_key
    lines = [
        f"public_key={key_to_hex(peer.public_key)}",
        f"preshared_key={key_to_hex(psk) if psk else '00' * 32}",
        *([f"endpoint={peer.endpoint}"] if peer.endpoint else []),
        f"persistent_keepalive_interval={peer.keepalive_s}",
        "replace_allowed_ips=true",
    ]
    lines += [f"allowed_ip={ip}" for ip in canonical_ips(peer.allowed_ips)]
    return lines


def remove_peer_lines(public_key: str) -> list[str]:
    return [f"public_key={key_to_hex(public_key)}", "remove=true"]
