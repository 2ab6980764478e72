"""Render the technician's wg-quick file: a split tunnel to exactly the granted devices."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .errors import PolicyError
from .grants import Grant
from .validation import validate_public_key


@dataclass(frozen=True, slots=True)
class TechnicianConfig:
    """Everything stock wg-quick needs; no DNS line, so the technician's resolver is untouched."""

    private_key: str | None
    tunnel_ip: IPv4Address
    router_public_key: str
    endpoint: str
    grants: tuple[Grant, ...]
    preshared_key: str | None = None
    tunnel_ip6: IPv6Address | None = None
    keepalive_s: int = 25


def allowed_ips(grants: tuple[Grant, ...]) -> list[str]:
    """The granted devices as host routes, in a stable order, each once."""
    hosts = sorted({grant.device_ip for grant in grants}, key=lambda ip: (ip.version, int(ip)))
    return [f"{ip}/{ip.max_prefixlen}" for ip in hosts]


def render_wg_quick(config: TechnicianConfig) -> str:
    """The text of ``ztb-SESSION.conf``; ``private_key=None`` leaves a placeholder line.

    The placeholder is for a technician whose CLI made the key pair locally: the CLI puts
    its private key in before writing the file.
    """
    validate_public_key(config.router_public_key)
    host, sep, port = config.endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PolicyError(f"endpoint must be HOST:PORT, not {config.endpoint!r}")
    if not config.grants:
        raise PolicyError("a config needs at least one granted device")
    addresses = [f"{config.tunnel_ip}/32"]
    if config.tunnel_ip6 is not None:
        addresses.append(f"{config.tunnel_ip6}/128")
    lines = [
        "[Interface]",
        f"PrivateKey = {config.private_key or '<your private key>'}",
        f"Address = {', '.join(addresses)}",
        "",
        "[Peer]",
        f"PublicKey = {config.router_public_key}",
    ]
    if config.preshared_key:
        lines.append(f"PresharedKey = {config.preshared_key}")
    lines += [
        f"Endpoint = {config.endpoint}",
        f"AllowedIPs = {', '.join(allowed_ips(config.grants))}",
        f"PersistentKeepalive = {config.keepalive_s}",
    ]
    return "\n".join(lines) + "\n"
