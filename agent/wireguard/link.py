"""Addresses, routes and links of the agent's interface through the ``ip`` tool.

Both WireGuard backends share this; ``ip -j`` keeps the agent free of a netlink library
for plain link work (pyroute2's root package alone costs ~30 MB RSS).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from ipaddress import ip_interface, ip_network
from typing import Any

from .backend import WireGuardError

_IFNAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}$")
_TIMEOUT_S = 15


def validate_ifname(name: str) -> str:
    """Linux interface names: 1-15 characters; also used in a socket path, so no slashes."""
    if not _IFNAME.match(name):
        raise WireGuardError(f"interface name {name!r} must be 1-15 of A-Z a-z 0-9 _ . -")
    return name


def ip(*args: str) -> str:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise WireGuardError(f"ip {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = ip("-j", *args).strip()
    parsed: list[dict[str, Any]] = json.loads(out) if out else []
    return parsed


def link_kind(name: str) -> str | None:
    """``wireguard``, ``tun``, another kind, ``""`` for none reported, or None if absent."""
    done = subprocess.run(
        ["ip", "-j", "-d", "link", "show", "dev", name],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    if not links:
        return None
    return str(links[0].get("linkinfo", {}).get("info_kind", ""))


def delete_link(name: str) -> bool:
    if link_kind(name) is None:
        return False
    ip("link", "del", "dev", name)
    return True


def sync_addresses(name: str, addresses: Sequence[str]) -> None:
    """Make the interface's global addresses exactly ``addresses``; link-local stays."""
    wanted = {ip_interface(a) for a in addresses}
    have = set()
    for link in _ip_json("addr", "show", "dev", name):
        for info in link.get("addr_info", []):
            if info.get("scope") == "global":
                have.add(ip_interface(f"{info['local']}/{info['prefixlen']}"))
    for extra in sorted(have - wanted, key=str):
        ip("addr", "del", str(extra), "dev", name)
    for missing in sorted(wanted - have, key=str):
        ip("addr", "add", str(missing), "dev", name)


def sync_routes(name: str, routes: Sequence[str]) -> None:
    """Make the routes through the interface exactly ``routes`` (it carries nothing else)."""
    wanted = {ip_network(r) for r in routes}
    for family in ("-4", "-6"):
        have = set()
        for route in _ip_json(family, "route", "show", "dev", name):
            dst = route.get("dst", "")
            if dst and dst != "default" and route.get("protocol") != "kernel":
                host_bits = 32 if family == "-4" else 128
                have.add(ip_network(dst if "/" in dst else f"{dst}/{host_bits}"))
        version = 4 if family == "-4" else 6
        for extra in sorted(have - wanted, key=str):
            ip(family, "route", "del", str(extra), "dev", name)
        for missing in sorted(n for n in wanted if n.version == version and n not in have):
            ip(family, "route", "replace", str(missing), "dev", name)


def bring_up(name: str, addresses: Sequence[str], routes: Sequence[str]) -> None:
    sync_addresses(name, addresses)
    ip("link", "set", "dev", name, "up")
    sync_routes(name, routes)
