"""The systemd units in ``packaging/systemd``: ``systemd-analyze verify`` accepts them, the
sysusers/tmpfiles snippets make the account and directories with the right owners, and the
sandboxing the operations guide promises is there.

Everything runs against a throwaway root directory (``--root``) holding a copy of the
host's stock units, so nothing on this machine is changed. Missing systemd tools skip the
tests, except under ``CI=true`` where they fail: CI must check the units.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
UNITS = ("ztb-broker.service", "ztb-relay.service", "ztb-agent.service")
INSTALLED_ZTB = "opt/ztb/bin/ztb"  # where the units expect the venv's command


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        _missing(f"{tool} not installed (apt-get install systemd)")
    assert found is not None
    return found


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root with the stock units (targets the ztb units refer to), an /etc with only
    root in it, and a stand-in for the installed ``ztb`` command."""
    stock = Path("/usr/lib/systemd/system")
    if not stock.is_dir():
        _missing(f"no stock units in {stock} (apt-get install systemd)")
    root = tmp_path / "root"
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    command = root / INSTALLED_ZTB
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    for unit in units:
        shutil.copy(PACKAGING / unit, root / "etc/systemd/system" / unit)
    paths = [f"/etc/systemd/system/{unit}" for unit in units]
    return subprocess.run(
        [_require("systemd-analyze"), "verify", f"--root={root}", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "ztb-" in line]


def test_units_pass_systemd_analyze_verify(fake_root: Path) -> None:
    result = _verify(fake_root, *UNITS)
    assert result.returncode == 0, result.stderr
    assert _complaints(result) == []


def test_verify_catches_a_broken_unit(fake_root: Path) -> None:
    """The check above can fail: an unknown key and a missing command are reported."""
    broken = (
        (PACKAGING / "ztb-broker.service")
        .read_text()
        .replace("ProtectClock=yes", "ProtectClok=yes")
    )
    (fake_root / "etc/systemd/system/ztb-broker.service").write_text(broken)
    result = subprocess.run(
        [
            _require("systemd-analyze"),
            "verify",
            f"--root={fake_root}",
            "/etc/systemd/system/ztb-broker.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert any("ProtectClok" in line for line in _complaints(result))
    (fake_root / INSTALLED_ZTB).unlink()
    assert _verify(fake_root, "ztb-agent.service").returncode != 0


def test_sysusers_and_tmpfiles_make_the_account_and_owned_directories(fake_root: Path) -> None:
    subprocess.run(
        [_require("systemd-sysusers"), f"--root={fake_root}", PACKAGING / "ztb-sysusers.conf"],
        check=True,
        capture_output=True,
    )
    passwd = (fake_root / "etc/passwd").read_text().splitlines()
    (ztb,) = [line.split(":") for line in passwd if line.startswith("ztb:")]
    uid, gid, shell = int(ztb[2]), int(ztb[3]), ztb[6]
    assert uid != 0
    assert shell.endswith("nologin")
    subprocess.run(
        [
            _require("systemd-tmpfiles"),
            f"--root={fake_root}",
            "--create",
            PACKAGING / "ztb-tmpfiles.conf",
        ],
        check=True,
        capture_output=True,
    )
    expected = {
        "var/lib/ztb-broker": (uid, gid, 0o700),
        "var/lib/ztb-relay": (uid, gid, 0o700),
        "var/lib/ztb-agent": (0, 0, 0o700),
        "etc/ztb": (0, gid, 0o750),
    }
    for path, (owner, group, mode) in expected.items():
        info = (fake_root / path).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (owner, group, mode), path


def _service(unit: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(PACKAGING / unit)
    return parser["Service"]


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_is_sandboxed(unit: str) -> None:
    service = _service(unit)
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"].startswith("/var/lib/ztb-")
    assert service["UMask"] == "0077"


def test_broker_and_relay_run_unprivileged_with_secrets_from_an_environment_file() -> None:
    for unit in ("ztb-broker.service", "ztb-relay.service"):
        service = _service(unit)
        assert service["User"] == "ztb"
        assert service["EnvironmentFile"].startswith("/etc/ztb/")
        assert int(service["LimitNOFILE"]) >= 65536
    assert _service("ztb-broker.service")["CapabilityBoundingSet"] == ""
    # The relay hands learned paths to nftables: that one capability, nothing else.
    assert _service("ztb-relay.service")["CapabilityBoundingSet"] == "CAP_NET_ADMIN"


def test_agent_holds_only_cap_net_admin() -> None:
    service = _service("ztb-agent.service")
    assert service["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert service["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert service["KillMode"] == "process"  # wireguard-go outlives an agent restart
