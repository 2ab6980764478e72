"""Network-namespace primitives: create, enter, run in, and remove named namespaces.

Links are always created *inside* a lab namespace (a veth's peer is placed straight into
its target namespace), so the host's root namespace never sees a lab interface.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import NetNS, netns

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02  # no duplicate-address detection: IPv6 addresses usable at once

_libc = ctypes.CDLL(None, use_errno=True)


def namespace_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with ``prefix-`` (every namespace for ``""``)."""
    start = f"{prefix}-" if prefix else ""
    return sorted(name for name in netns.listnetns() if name.startswith(start))


def create_namespace(name: str) -> None:
    if namespace_exists(name):
        raise RuntimeError(f"network namespace {name} already exists")
    netns.create(name)
    with ipr(name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def pids_in(name: str) -> list[int]:
    """Processes living in namespace ``name`` (all started by the lab that made it)."""
    if not namespace_exists(name):
        return []
    argv = ["ip", "netns", "pids", name]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    return [int(pid) for pid in out.split()]


def remove_namespace(name: str) -> None:
    if namespace_exists(name):
        netns.remove(name)


@contextmanager
def ipr(name: str) -> Iterator[Any]:
    """A pyroute2 netlink handle inside namespace ``name``."""
    handle = NetNS(name)
    try:
        yield handle
    finally:
        handle.close()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Move the *calling thread* into namespace ``name`` for the block, then back.

    Sockets made in the block stay in that namespace for their whole life, so probes can
    run from the test process without a subprocess per packet.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in(name: str, family: int, kind: int) -> socket.socket:
    with inside(name):
        return socket.socket(family, kind)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


def run_in(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 20.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command in namespace ``name``; a failure raises with the command's stderr."""
    result = subprocess.run(
        exec_argv(name, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
        check=False,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(
            f"in {name}: {' '.join(argv)} failed ({result.returncode}): "
            f"{detail[-1] if detail else 'no output'}"
        )
    return result


def sysctl(name: str, values: Mapping[str, str]) -> None:
    run_in(name, ["sysctl", "-q", "-w", *(f"{key}={value}" for key, value in values.items())])


def link_index(ns: Any, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"no interface {ifname}")
    return int(found[0])


def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair made in ``ns_a`` whose peer is born in ``ns_b``."""
    with ipr(ns_a) as ns:
        ns.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})


def add_bridge(ns_name: str, ifname: str) -> None:
    with ipr(ns_name) as ns:
        ns.link("add", ifname=ifname, kind="bridge")
        ns.link("set", index=link_index(ns, ifname), state="up")


def enslave(ns_name: str, ifname: str, bridge: str) -> None:
    with ipr(ns_name) as ns:
        ns.link("set", index=link_index(ns, ifname), master=link_index(ns, bridge), state="up")


def configure(
    ns_name: str,
    ifname: str,
    addresses: Sequence[str] = (),
    routes: Sequence[tuple[str, str]] = (),
) -> None:
    """Bring ``ifname`` up with ``addresses`` (CIDR) and ``routes`` (dst, gateway)."""
    with ipr(ns_name) as ns:
        index = link_index(ns, ifname)
        ns.link("set", index=index, state="up")
        for cidr in addresses:
            address, _, length = cidr.partition("/")
            flags = IFA_F_NODAD if ":" in address else 0
            ns.addr("add", index=index, address=address, prefixlen=int(length), flags=flags)
        for dst, gateway in routes:
            ns.route("add", dst=dst, gateway=gateway)
