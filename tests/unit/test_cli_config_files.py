"""Config files get names ``wg-quick up`` accepts: ``ztb-<home>``, at most 15 characters."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from netpolicy.wgquick import INTERFACE_NAME, config_interface_name
from ztb.client.config_files import BadConfigName, header, write_config
from ztb.client.keys import KeyNotHere, fill_private_key

CONFIG = "[Interface]\nPrivateKey = KEY=\n"


@pytest.mark.parametrize(
    ("home", "taken", "name"),
    [
        ("maple", (), "ztb-maple"),
        ("Maple Street", (), "ztb-maple-stree"),
        ("Müller Haus", (), "ztb-muller-haus"),
        ("東京", (), "ztb-home"),
        ("a/b c", (), "ztb-a-b-c"),
        ("maple", ("ztb-maple",), "ztb-maple-2"),
        ("maple", ("ztb-maple", "ztb-maple-2"), "ztb-maple-3"),
        ("Maple Street", ("ztb-maple-stree",), "ztb-maple-str-2"),
    ],
)
def test_interface_names_are_short_valid_and_distinct(
    home: str, taken: tuple[str, ...], name: str
) -> None:
    assert config_interface_name(home, taken) == name
    assert INTERFACE_NAME.match(name)


def test_many_sessions_to_one_home_never_share_a_name() -> None:
    taken: set[str] = set()
    for _ in range(120):
        name = config_interface_name("a home with a long name", taken)
        assert INTERFACE_NAME.match(name) and name not in taken
        taken.add(name)


def test_a_directory_gets_ztb_home_conf_and_keeps_it_per_session(tmp_path: Path) -> None:
    first = write_config(tmp_path, "ses_a", "Maple Street", CONFIG)
    assert first == tmp_path / "ztb-maple-stree.conf"
    assert first.read_text() == header("ses_a") + CONFIG
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    # The same session again: same file. Another session to the same home: its own file.
    assert write_config(tmp_path, "ses_a", "Maple Street", CONFIG) == first
    second = write_config(tmp_path, "ses_b", "Maple Street", CONFIG)
    assert second == tmp_path / "ztb-maple-str-2.conf"
    assert first.read_text().startswith(header("ses_a"))


def test_a_file_name_wg_quick_refuses_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadConfigName, match="at most 15"):
        write_config(tmp_path / "ztb-ses_3k9fq2zx.conf", "ses_a", "maple", CONFIG)
    assert not list(tmp_path.iterdir())
    written = write_config(tmp_path / "tunnel.conf", "ses_a", "maple", CONFIG)
    assert written.read_text() == CONFIG  # a name the person chose carries no header
    assert write_config(tmp_path / "notes.txt", "ses_a", "maple", CONFIG).exists()


def test_a_missing_broker_made_key_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTB_HOME", str(tmp_path))
    placeholder = "[Interface]\nPrivateKey = <your private key>\n"
    with pytest.raises(KeyNotHere, match="shown once, in the first config download"):
        fill_private_key(placeholder, "ses_a", "broker")
    with pytest.raises(KeyNotHere, match="fetch the config where the session was requested"):
        fill_private_key(placeholder, "ses_a", "technician")
