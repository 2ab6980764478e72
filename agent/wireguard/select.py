"""Pick the WireGuard backend at run time: the override first, then what the system has.

Like Tailscale's linuxfw detector. An existing interface decides by its kind (a restarted
agent keeps what it made); otherwise kernel WireGuard wins when the module is present or
the kernel accepts ``ip link add ... type wireguard`` (which also autoloads the module).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .backend import WireGuardBackend, WireGuardChoice
from .kernel import KernelWireGuard
from .link import link_kind, validate_ifname
from .uapi import socket_path
from .userspace import UserspaceWireGuard

_MODULE = Path("/sys/module/wireguard")


def kernel_wireguard_usable(name: str) -> bool:
    """True if the kernel can make WireGuard links; a successful trial leaves ``name`` up."""
    if _MODULE.exists():
        return True
    done = subprocess.run(
        ["ip", "link", "add", "dev", name, "type", "wireguard"],
        capture_output=True,
        timeout=15,
        check=False,
    )
    return done.returncode == 0


def detect_wireguard(name: str, choice: WireGuardChoice = "auto", probe: bool = True) -> str:
    """``kernel`` or ``userspace``; ``probe=False`` never creates anything (for teardown)."""
    if choice != "auto":
        return choice
    kind = link_kind(name)
    if kind == "wireguard":
        return "kernel"
    if kind is not None or socket_path(name).exists():
        return "userspace"
    return "kernel" if probe and kernel_wireguard_usable(name) else "userspace"


def make_wireguard(
    name: str, choice: WireGuardChoice = "auto", probe: bool = True
) -> WireGuardBackend:
    validate_ifname(name)
    if detect_wireguard(name, choice, probe) == "kernel":
        return KernelWireGuard(name)
    return UserspaceWireGuard(name)
