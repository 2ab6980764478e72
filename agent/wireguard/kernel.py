"""Kernel WireGuard behind the WireGuard backend protocol, through generic netlink.

Uses pyroute2's narrow ``pyroute2.netlink.generic.wireguard`` module, imported only when
this backend is chosen (the package root costs ~10 MB more RSS). The netlink object is
injectable so the translation to and from netlink attributes is unit-tested with a fake;
this machine has no kernel WireGuard to test it against.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .backend import (
    KEY_BYTES,
    InterfaceConfig,
    PeerConfig,
    PeerState,
    WireGuardError,
    canonical_ips,
)
from .link import bring_up, delete_link, ip, link_kind, validate_ifname

_ZERO_KEY = base64.b64encode(bytes(KEY_BYTES)).decode()


class GenericNetlinkWireGuard(Protocol):
    """The two calls of ``pyroute2.WireGuard`` the backend uses."""

    def info(self, interface: str) -> Iterable[Any]: ...

    def set(
        self,
        interface: str,
        *,
        listen_port: int | None = None,
        fwmark: int | None = None,
        private_key: str | None = None,
        peer: dict[str, Any] | None = None,
    ) -> Any: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _endpoint(value: Any) -> str | None:
    """``IP:PORT`` of a peer's endpoint attribute as pyroute2 decodes it, else None."""
    if isinstance(value, Mapping) and value.get("addr") and value.get("port"):
        return f"{value['addr']}:{value['port']}"
    return None


def _attrs(message: Any) -> dict[str, Any]:
    return dict(message["attrs"])


def parse_device(messages: Iterable[Any]) -> tuple[dict[str, Any], list[PeerState]]:
    """Device attributes and peers of a ``WG_CMD_GET_DEVICE`` dump.

    A large device arrives split over several messages and one peer's allowed-ips may
    continue in the next message, so peers are merged by public key.
    """
    device: dict[str, Any] = {}
    merged: dict[str, dict[str, Any]] = {}
    allowed: dict[str, list[str]] = {}
    for message in messages:
        attrs = _attrs(message)
        device.update({k: v for k, v in attrs.items() if k != "WGDEVICE_A_PEERS"})
        for peer in attrs.get("WGDEVICE_A_PEERS") or []:
            peer_attrs = _attrs(peer)
            key = _text(peer_attrs["WGPEER_A_PUBLIC_KEY"])
            merged.setdefault(key, {}).update(peer_attrs)
            ips = peer_attrs.get("WGPEER_A_ALLOWEDIPS") or []
            allowed.setdefault(key, []).extend(str(ip["addr"]) for ip in ips)
    peers = []
    for key, attrs in merged.items():
        psk = _text(attrs.get("WGPEER_A_PRESHARED_KEY", _ZERO_KEY))
        handshake: Mapping[str, int] = attrs.get("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
        peers.append(
            PeerState(
                public_key=key,
                allowed_ips=canonical_ips(allowed.get(key, [])),
                preshared_key=None if psk == _ZERO_KEY else psk,
                keepalive_s=int(attrs.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
                endpoint=_endpoint(attrs.get("WGPEER_A_ENDPOINT")),
                last_handshake=handshake.get("tv_sec", 0) + handshake.get("tv_nsec", 0) / 1e9,
                rx_bytes=int(attrs.get("WGPEER_A_RX_BYTES") or 0),
                tx_bytes=int(attrs.get("WGPEER_A_TX_BYTES") or 0),
            )
        )
    return device, peers


class KernelWireGuard:
    kind = "kernel"

    def __init__(self, name: str, netlink: GenericNetlinkWireGuard | None = None) -> None:
        self.name = validate_ifname(name)
        self._netlink = netlink

    def _wg(self) -> GenericNetlinkWireGuard:
        if self._netlink is None:
            from pyroute2.netlink.generic.wireguard import WireGuard

            self._netlink = WireGuard()
        return self._netlink

    def _call_set(self, **kwargs: Any) -> None:
        try:
            self._wg().set(self.name, **kwargs)
        except (OSError, ValueError) as exc:  # pyroute2's NetlinkError is an OSError
            raise WireGuardError(f"netlink set on {self.name}: {exc}") from None

    def ensure_interface(self, config: InterfaceConfig) -> None:
        kind = link_kind(self.name)
        if kind is None:
            ip("link", "add", "dev", self.name, "type", "wireguard")
        elif kind != "wireguard":
            raise WireGuardError(f"interface {self.name} exists but is {kind or 'not wireguard'}")
        device, _ = parse_device(self._wg().info(self.name))
        have_key = _text(device.get("WGDEVICE_A_PRIVATE_KEY", ""))
        changes: dict[str, Any] = {}
        if have_key != config.private_key:
            changes["private_key"] = config.private_key
        if device.get("WGDEVICE_A_LISTEN_PORT") != config.listen_port:
            changes["listen_port"] = config.listen_port
        if changes:
            self._call_set(**changes)
        bring_up(self.name, config.addresses, config.routes)

    def list_peers(self) -> list[PeerState]:
        if link_kind(self.name) != "wireguard":
            return []
        return parse_device(self._wg().info(self.name))[1]

    def set_peer(self, peer: PeerConfig) -> None:
        attrs: dict[str, Any] = {
            "public_key": peer.public_key,
            "preshared_key": peer.preshared_key or _ZERO_KEY,
            "persistent_keepalive": peer.keepalive_s,
            "replace_allowed_ips": True,
            "allowed_ips": list(canonical_ips(peer.allowed_ips)),
        }
        if peer.endpoint:
            host, _, port = peer.endpoint.rpartition(":")
            attrs |= {"endpoint_addr": host, "endpoint_port": int(port)}
        self._call_set(peer=attrs)

    def remove_peer(self, public_key: str) -> None:
        self._call_set(peer={"public_key": public_key, "remove": True})

    def delete_interface(self) -> bool:
        return delete_link(self.name)
