"""The OpenWrt package's shell parts under busybox ``sh`` (the router's shell): the procd
init script against a stand-in procd that records its calls, and the uci-defaults script
that opens the WireGuard port in fw4 against a stand-in ``uci``.

The stand-ins mimic OpenWrt's ``/lib/functions.sh`` (``config_get`` reads
``CONFIG_<section>_<option>``, as the real one stores them after ``config_load``) and
``procd.sh``. Missing busybox skips, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "packaging" / "openwrt" / "ztb-agent"
FILES = PACKAGE / "files"

STAND_IN_PROCD = r"""
record() {
    printf '%s' "$1" >> "$CALLS"; shift
    for a in "$@"; do printf ' <%s>' "$a" >> "$CALLS"; done
    echo >> "$CALLS"
}
procd_open_instance() { record open_instance "$@"; }
procd_set_param() { record set_param "$@"; }
procd_close_instance() { record close_instance "$@"; }
procd_add_reload_trigger() { record reload_trigger "$@"; }
config_load() { record config_load "$@"; }
config_get() {
    eval "_value=\${CONFIG_$2_$3-}"
    [ -n "$_value" ] || _value="$4"
    eval "$1=\$_value"
}
config_get_bool() {
    config_get "$@"
    eval "_value=\$$1"
    case "$_value" in 1|on|true|yes|enabled) eval "$1=1" ;; *) eval "$1=0" ;; esac
}
. "$INIT"
start_service
record start_service_returned "$?"
service_triggers
"""

STAND_IN_UCI = r"""#!/bin/sh
printf 'uci' >> "$CALLS"; for a in "$@"; do printf ' <%s>' "$a" >> "$CALLS"; done; echo >> "$CALLS"
case "$*" in
    "-q get ztb.agent.listen_port") [ -n "$ZTB_PORT" ] && echo "$ZTB_PORT" ;;
    "-q get firewall.ztb_wireguard") [ -n "$RULE_EXISTS" ] && echo rule ;;
    "-q batch") sed 's/^/  batch: /' >> "$CALLS" ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def busybox() -> str:
    found = shutil.which("busybox")
    if found is None:
        message = "busybox not installed (apt-get install busybox)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run_init(busybox: str, tmp_path: Path, **config: str) -> tuple[list[str], str]:
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {
        "PATH": "/usr/bin:/bin",
        "CALLS": str(calls),
        "INIT": str(FILES / "ztb.init"),
        **{f"CONFIG_agent_{option}": value for option, value in config.items()},
    }
    result = subprocess.run(
        [busybox, "sh", "-c", STAND_IN_PROCD], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return calls.read_text().splitlines(), result.stderr


def _enrolled(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.json").write_text("{}")
    return state


def test_init_runs_the_agent_under_procd_with_logs_to_logd_and_respawn(
    busybox: str, tmp_path: Path
) -> None:
    state = _enrolled(tmp_path)
    calls, _ = _run_init(busybox, tmp_path, state_dir=str(state))
    assert calls == [
        "config_load <ztb>",
        "open_instance <agent>",
        f"set_param <command> </usr/bin/ztb> <agent> <run> <--state-dir> <{state}> "
        "<--nft> <binary> <--wireguard> <kernel>",
        "set_param <stdout> <1>",
        "set_param <stderr> <1>",
        "set_param <respawn> <3600> <5> <5>",
        "set_param <term_timeout> <10>",
        "set_param <file> </etc/config/ztb>",
        "close_instance",
        "start_service_returned <0>",
        "reload_trigger <ztb>",
    ]


def test_init_takes_backends_from_uci(busybox: str, tmp_path: Path) -> None:
    state = _enrolled(tmp_path)
    calls, _ = _run_init(busybox, tmp_path, state_dir=str(state), nft="lib", wireguard="userspace")
    (command,) = [call for call in calls if call.startswith("set_param <command>")]
    assert command.endswith("<--nft> <lib> <--wireguard> <userspace>")


def test_init_disabled_in_uci_starts_nothing(busybox: str, tmp_path: Path) -> None:
    state = _enrolled(tmp_path)
    calls, _ = _run_init(busybox, tmp_path, state_dir=str(state), enabled="0")
    assert not [call for call in calls if "instance" in call]
    assert "start_service_returned <0>" in calls


def test_init_refuses_a_state_dir_that_was_never_enrolled(busybox: str, tmp_path: Path) -> None:
    calls, stderr = _run_init(busybox, tmp_path, state_dir=str(tmp_path / "nothing"))
    assert not [call for call in calls if "instance" in call]
    assert "start_service_returned <1>" in calls
    assert "is not enrolled" in stderr


def _run_uci_defaults(busybox: str, tmp_path: Path, **env: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    uci = bin_dir / "uci"
    uci.write_text(STAND_IN_UCI)
    uci.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    result = subprocess.run(
        [busybox, "sh", str(FILES / "ztb.uci-defaults")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr  # uci-defaults scripts are deleted on 0
    return calls.read_text().splitlines()


def test_uci_defaults_opens_the_wireguard_port_on_wan_once(busybox: str, tmp_path: Path) -> None:
    calls = _run_uci_defaults(busybox, tmp_path, ZTB_PORT="51999")
    batch = [line.strip().removeprefix("batch: ") for line in calls if "batch:" in line]
    assert batch == [
        "set firewall.ztb_wireguard=rule",
        "set firewall.ztb_wireguard.name='Allow-ztb-WireGuard'",
        "set firewall.ztb_wireguard.src='wan'",
        "set firewall.ztb_wireguard.proto='udp'",
        "set firewall.ztb_wireguard.dest_port='51999'",
        "set firewall.ztb_wireguard.target='ACCEPT'",
        "commit firewall",
    ]
    again = _run_uci_defaults(busybox, tmp_path, ZTB_PORT="51999", RULE_EXISTS="1")
    assert not [line for line in again if "batch" in line]


def test_uci_defaults_port_defaults_to_51820(busybox: str, tmp_path: Path) -> None:
    calls = _run_uci_defaults(busybox, tmp_path)
    assert "  batch: set firewall.ztb_wireguard.dest_port='51820'" in [
        line.replace("\t", "") for line in calls
    ]


def test_feed_makefile_installs_what_the_tests_exercise() -> None:
    makefile = (PACKAGE / "Makefile").read_text()
    depends = re.search(r"DEPENDS:=(.*?)\nendef", makefile, re.S)
    assert depends is not None
    names = set(re.findall(r"\+([\w-]+)", depends.group(1)))
    assert {"python3-light", "kmod-wireguard", "nftables-json", "python3-cryptography"} <= names
    for installed in ("files/ztb.init", "files/ztb.config", "files/ztb.uci-defaults"):
        assert f"./{installed}" in makefile
    assert "-|$(PYTHON3_PKG_DIR)/broker" in makefile  # the router gets no broker
