"""WireGuard backends without a kernel: UAPI framing over a real Unix socket, and the
kernel backend's netlink translation against a fake (this machine has no kernel WireGuard).
"""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.wireguard import uapi as wg_uapi
from agent.wireguard.backend import PeerConfig, WireGuardError, key_from_hex, key_to_hex
from agent.wireguard.kernel import KernelWireGuard, parse_device

PUB = base64.b64encode(bytes(range(32))).decode()
PSK = base64.b64encode(bytes([7]) * 32).decode()


def test_keys_convert_between_base64_and_hex() -> None:
    assert key_to_hex(PUB) == bytes(range(32)).hex()
    assert key_from_hex(bytes(range(32)).hex()) == PUB
    assert key_from_hex("00" * 32) is None
    with pytest.raises(WireGuardError, match="32 bytes"):
        key_to_hex(base64.b64encode(b"short").decode())
    with pytest.raises(WireGuardError, match="base64"):
        key_to_hex("not base64!")


def test_peer_lines_are_incremental_with_hex_psk_and_no_endpoint() -> None:
    lines = wg_uapi.peer_lines(
        PeerConfig(PUB, ("100.64.0.9/32", "fd00::9/128", "100.64.0.9/32"), PSK)
    )
    assert lines == [
        f"public_key={key_to_hex(PUB)}",
        f"preshared_key={'07' * 32}",
        "persistent_keepalive_interval=0",
        "replace_allowed_ips=true",
        "allowed_ip=100.64.0.9/32",
        "allowed_ip=fd00::9/128",
    ]
    assert not any(line.startswith(("replace_peers", "endpoint")) for line in lines)


def test_a_relayed_peer_dials_the_relay_with_a_keepalive() -> None:
    lines = wg_uapi.peer_lines(
        PeerConfig(PUB, ("100.64.0.9/32",), endpoint="203.0.113.50:40001", keepalive_s=25)
    )
    assert lines[2:4] == ["endpoint=203.0.113.50:40001", "persistent_keepalive_interval=25"]
    assert wg_uapi.peer_lines(PeerConfig(PUB, ()))[1] == f"preshared_key={'00' * 32}"
    assert wg_uapi.remove_peer_lines(PUB) == [f"public_key={key_to_hex(PUB)}", "remove=true"]


GET_REPLY = (
    f"private_key={'11' * 32}\nlisten_port=51820\n"
    f"public_key={key_to_hex(PUB)}\npreshared_key={'07' * 32}\nprotocol_version=1\n"
    "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
    "tx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=0\n"
    "allowed_ip=100.64.0.9/32\nallowed_ip=fd00::9/128\n"
    f"public_key={'22' * 32}\npreshared_key={'00' * 32}\n"
    "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
    "errno=0\n\n"
)


@pytest.fixture
def uapi_server(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A stand-in wireguard-go socket: answers ``get`` with GET_REPLY, records ``set``s."""
    path = tmp_path / "wgtest.sock"
    received: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(5)

    def serve() -> None:
        for _ in range(3):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    data += conn.recv(4096)
                received.append(data.decode())
                reply = GET_REPLY if data.startswith(b"get=1") else "errno=0\n\n"
                if "bad" in data.decode():
                    reply = "errno=22\n\n"
                conn.sendall(reply.encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, received
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        server.close()
        thread.join(timeout=5)


def test_uapi_get_parses_device_and_peers(uapi_server: tuple[Path, list[str]]) -> None:
    path, _ = uapi_server
    pairs = wg_uapi.get(path)
    assert wg_uapi.device_settings(pairs)["listen_port"] == "51820"
    first, second = wg_uapi.parse_peers(pairs)
    assert first.public_key == PUB
    assert first.preshared_key == PSK
    assert first.allowed_ips == ("100.64.0.9/32", "fd00::9/128")
    assert first.last_handshake == pytest.approx(1700000000.5)
    assert (first.rx_bytes, first.tx_bytes) == (20, 10)
    assert second.preshared_key is None and second.allowed_ips == ()


def test_uapi_set_sends_one_message_and_reports_errno(
    uapi_server: tuple[Path, list[str]],
) -> None:
    path, received = uapi_server
    wg_uapi.set_lines(path, wg_uapi.remove_peer_lines(PUB), "remove")
    assert received == [f"set=1\npublic_key={key_to_hex(PUB)}\nremove=true\n\n"]
    with pytest.raises(WireGuardError, match="errno 22"):
        wg_uapi.set_lines(path, ["bad=1"], "set junk")


def test_uapi_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WireGuardError, match=r"nowhere\.sock"):
        wg_uapi.get(tmp_path / "nowhere.sock")


class FakeMessage(dict[str, Any]):
    """The shape pyroute2 yields: ``msg["attrs"]`` is a list of (name, value) pairs."""

    def __init__(self, attrs: list[tuple[str, Any]]) -> None:
        super().__init__(attrs=attrs)


class FakeNetlink:
    def __init__(self, messages: list[FakeMessage]) -> None:
        self.messages = messages
        self.sets: list[dict[str, Any]] = []

    def info(self, interface: str) -> Iterable[Any]:
        return self.messages

    def set(self, interface: str, **options: Any) -> Any:
        self.sets.append(
            {
                "interface": interface,
                "peer": options.get("peer"),
                "listen_port": options.get("listen_port"),
            }
        )


def _peer(key: str, ips: list[str], **extra: Any) -> FakeMessage:
    attrs = [
        ("WGPEER_A_PUBLIC_KEY", key.encode()),
        ("WGPEER_A_ALLOWEDIPS", [{"addr": ip} for ip in ips]),
        *extra.items(),
    ]
    return FakeMessage(attrs)


def test_netlink_dump_split_over_messages_is_merged_per_peer() -> None:
    zero = base64.b64encode(bytes(32))
    messages = [
        FakeMessage(
            [
                ("WGDEVICE_A_LISTEN_PORT", 51820),
                (
                    "WGDEVICE_A_PEERS",
                    [
                        _peer(
                            PUB,
                            ["100.64.0.9/32"],
                            WGPEER_A_PRESHARED_KEY=PSK.encode(),
                            WGPEER_A_LAST_HANDSHAKE_TIME={"tv_sec": 5, "tv_nsec": 0},
                            WGPEER_A_RX_BYTES=3,
                            WGPEER_A_TX_BYTES=4,
                        )
                    ],
                ),
            ]
        ),
        FakeMessage([("WGDEVICE_A_PEERS", [_peer(PUB, ["fd00::9/128"])])]),
        FakeMessage([("WGDEVICE_A_PEERS", [_peer(PSK, [], WGPEER_A_PRESHARED_KEY=zero)])]),
    ]
    device, peers = parse_device(messages)
    assert device["WGDEVICE_A_LISTEN_PORT"] == 51820
    first, second = peers
    assert first.allowed_ips == ("100.64.0.9/32", "fd00::9/128")
    assert first.preshared_key == PSK
    assert (first.last_handshake, first.rx_bytes, first.tx_bytes) == (5.0, 3, 4)
    assert second.public_key == PSK and second.preshared_key is None


def test_kernel_backend_sets_and_removes_one_peer_at_a_time() -> None:
    netlink = FakeNetlink([])
    backend = KernelWireGuard("wgtest", netlink)
    backend.set_peer(PeerConfig(PUB, ("100.64.0.9/32",)))
    backend.remove_peer(PUB)
    assert netlink.sets == [
        {
            "interface": "wgtest",
            "listen_port": None,
            "peer": {
                "public_key": PUB,
                "preshared_key": base64.b64encode(bytes(32)).decode(),
                "persistent_keepalive": 0,
                "replace_allowed_ips": True,
                "allowed_ips": ["100.64.0.9/32"],
            },
        },
        {"interface": "wgtest", "listen_port": None, "peer": {"public_key": PUB, "remove": True}},
    ]


def test_interface_names_are_checked() -> None:
    with pytest.raises(WireGuardError, match="interface name"):
        KernelWireGuard("../etc/passwd", FakeNetlink([]))
    with pytest.raises(WireGuardError, match="interface name"):
        KernelWireGuard("a-name-too-long-for-linux", FakeNetlink([]))
