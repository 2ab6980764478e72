"""A technician's laptop: a key pair, a stock wg-quick config, and a curious user.

The config is exactly what the broker would hand out (``render_wg_quick``: a split tunnel
to the granted devices). After ``wg-quick up`` the lab widens the technician's own side
(AllowedIPs and routes towards the whole LAN, the tunnel pool, the internet host and the
IPv6 LAN): the router must hold the line, so every blocked probe really enters the tunnel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wireguard_tools import WireguardKey

from netpolicy.grants import Grant
from netpolicy.wgquick import TechnicianConfig, render_wg_quick

from . import netns
from .topology import INTERNET_HOST_IP, LAN, LAN6, TUNNEL_POOL, Technician

WG_QUICK_ENV = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}
WIDENED = (str(LAN), str(TUNNEL_POOL), f"{INTERNET_HOST_IP}/32", str(LAN6))


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: str
    public: str

    @classmethod
    def generate(cls) -> KeyPair:
        key = WireguardKey.generate()
        return cls(str(key), str(key.public_key()))


def write_secret(path: Path, text: str) -> None:
    """A file readable by root only, created that way (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_config(
    tech: Technician,
    keys: KeyPair,
    router_public_key: str,
    endpoint: str,
    grants: tuple[Grant, ...],
    run_dir: Path,
    preshared_key: str | None = None,
) -> Path:
    """``run_dir/IFNAME.conf``: wg-quick names the interface after the file."""
    text = render_wg_quick(
        TechnicianConfig(
            private_key=keys.private,
            tunnel_ip=tech.tunnel_ip,
            tunnel_ip6=tech.tunnel_ip6,
            router_public_key=router_public_key,
            endpoint=endpoint,
            grants=grants,
            preshared_key=preshared_key,
        )
    )
    path = run_dir / f"{tech.wg_interface}.conf"
    write_secret(path, text)
    return path


def connect(tech: Technician, config: Path, router_public_key: str) -> None:
    """``wg-quick up`` inside the technician's namespace, then widen its own side."""
    up(tech, config)
    widen(tech, router_public_key)


def up(tech: Technician, config: Path) -> None:
    """Stock ``wg-quick up`` inside the technician's namespace, nothing more."""
    netns.run_in(tech.namespace, ["wg-quick", "up", str(config)], env=WG_QUICK_ENV)


def widen(tech: Technician, router_public_key: str) -> None:
    """Send the lab's wider ranges into the tunnel too, so a probe of something outside
    the grant really enters the tunnel and meets the router's firewall."""
    ifname = tech.wg_interface
    netns.run_in(
        tech.namespace,
        ["wg", "set", ifname, "peer", router_public_key, "allowed-ips", ",".join(WIDENED)],
    )
    for cidr in WIDENED:
        family = "-6" if ":" in cidr else "-4"
        netns.run_in(tech.namespace, ["ip", family, "route", "replace", cidr, "dev", ifname])


def rejoin(
    tech: Technician,
    router_public_key: str,
    endpoint: str,
    preshared_key_file: Path | None,
) -> None:
    """Forget the old WireGuard session and re-add the router peer, as a reconnect does.

    After the router dropped and re-added this technician's peer, the technician would
    otherwise keep sending with stale session keys until WireGuard's ~15 s rekey timeout;
    a fresh peer makes the next packet start a new handshake at once.
    """
    ifname = tech.wg_interface
    netns.run_in(tech.namespace, ["wg", "set", ifname, "peer", router_public_key, "remove"])
    psk = ["preshared-key", str(preshared_key_file)] if preshared_key_file else []
    netns.run_in(
        tech.namespace,
        [
            "wg", "set", ifname, "peer", router_public_key,
            "endpoint", endpoint, "allowed-ips", ",".join(WIDENED), *psk,
        ],
    )  # fmt: skip


def disconnect(tech: Technician, config: Path) -> None:
    netns.run_in(tech.namespace, ["wg-quick", "down", str(config)], env=WG_QUICK_ENV, check=False)
