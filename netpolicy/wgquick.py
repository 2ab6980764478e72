"""Render the technician's wg-quick file: a split tunnel to exactly the granted devices."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
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


# wg-quick names the interface after the file and accepts only these names (the kernel's
# IFNAMSIZ is 16 bytes with the terminating NUL).
INTERFACE_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
_NOT_IN_NAMES = re.compile(r"[^a-z0-9_=+.-]+")


def config_interface_name(home_name: str, taken: Collection[str] = ()) -> str:
    """The interface (and file stem) for a downloaded config: ``ztb-<home>``, valid for wg-quick.

    At most 15 characters of ``[a-z0-9_=+.-]``: ``Maple Street`` gives ``ztb-maple-stree``,
    ``Müller`` gives ``ztb-muller``.
    A name in ``taken`` (another session's config already there, or a home whose name
    starts the same) gets ``-2``, ``-3``, ... in place of its tail, so two tunnels up at
    once never fight over one interface.
    """
    ascii_name = unicodedata.normalize("NFKD", home_name).encode("ascii", "ignore").decode()
    stem = _NOT_IN_NAMES.sub("-", ascii_name.lower()).strip("-.") or "home"
    base = f"ztb-{stem}"[:15].rstrip("-.")
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        suffix = f"-{number}"
        candidate = base[: 15 - len(suffix)].rstrip("-.") + suffix
    return candidate


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
