"""The technician's wg-quick file: split tunnel, exact AllowedIPs, accepted by stock tools."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from netpolicy import Grant, PolicyError, PortRange
from netpolicy.wgquick import TechnicianConfig, render_wg_quick
from tests.golden import assert_golden_text

ROUTER = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
PRIVATE = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="

GRANTS = (
    Grant(IPv4Address("192.168.1.21"), "udp", PortRange(5000, 5010), "camera"),
    Grant(IPv4Address("192.168.1.20"), "tcp", PortRange(443, 443), "thermostat"),
    Grant(IPv4Address("192.168.1.20"), "tcp", PortRange(80, 80), "thermostat"),
    Grant(IPv6Address("fd00:1::21"), "tcp", PortRange(554, 554), "camera"),
)


def config(private_key: str | None = PRIVATE) -> TechnicianConfig:
    return TechnicianConfig(
        private_key=private_key,
        tunnel_ip=IPv4Address("100.96.1.2"),
        tunnel_ip6=IPv6Address("fd00:96:1::2"),
        router_public_key=ROUTER,
        endpoint="203.0.113.1:51820",
        grants=GRANTS,
        preshared_key=PSK,
    )


def test_render_matches_golden() -> None:
    text = render_wg_quick(config())
    assert_golden_text("netpolicy/technician.conf", text)
    assert "DNS" not in text
    assert "0.0.0.0/0" not in text and "::/0" not in text


def test_allowed_ips_are_exactly_the_granted_hosts() -> None:
    line = next(x for x in render_wg_quick(config()).splitlines() if x.startswith("AllowedIPs"))
    assert line == "AllowedIPs = 192.168.1.20/32, 192.168.1.21/32, fd00:1::21/128"


def test_placeholder_when_the_key_stays_with_the_technician() -> None:
    assert "PrivateKey = <your private key>" in render_wg_quick(config(private_key=None))


@pytest.mark.parametrize("endpoint", ["203.0.113.1", ":51820", "host:port"])
def test_bad_endpoint_is_refused(endpoint: str) -> None:
    bad = TechnicianConfig(PRIVATE, IPv4Address("100.96.1.2"), ROUTER, endpoint, GRANTS)
    with pytest.raises(PolicyError, match="HOST:PORT"):
        render_wg_quick(bad)


def test_stock_wg_quick_accepts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ztb-test.conf"
    path.write_text(render_wg_quick(config()))
    path.chmod(0o600)
    stripped = subprocess.run(
        ["wg-quick", "strip", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "Address" not in stripped and f"PublicKey = {ROUTER}" in stripped
