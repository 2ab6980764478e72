"""Where ``ztb session config --output`` writes, so that ``wg-quick up FILE`` accepts it.

wg-quick names the interface after the file, so the file stem must be a valid interface
name (at most 15 characters). Given a directory, the CLI picks ``ztb-<home>.conf`` itself
(``netpolicy.wgquick.config_interface_name``, the same rule as the web download), skipping
names other sessions' configs already use there; a header line names the session, so
fetching the same session again reuses its file.
"""

from __future__ import annotations

from pathlib import Path

from netpolicy.wgquick import INTERFACE_NAME, config_interface_name
from ztb.client.keys import write_secret


class BadConfigName(ValueError):
    """The chosen file name would give wg-quick an interface name it refuses."""


def header(session_id: str) -> str:
    return f"# ztb session {session_id}\n"


def _belongs_to(path: Path, session_id: str) -> bool:
    try:
        with path.open() as file:
            return file.readline() == header(session_id)
    except OSError:
        return False


def write_config(output: Path, session_id: str, home_name: str, config: str) -> Path:
    """Write ``config`` (mode 0600) to ``output``, or to ``output/ztb-<home>.conf`` for a
    directory; returns the file written."""
    if output.is_dir():
        taken = {p.stem for p in output.glob("*.conf") if not _belongs_to(p, session_id)}
        path = output / f"{config_interface_name(home_name, taken)}.conf"
        write_secret(path, header(session_id) + config)
        return path
    if output.suffix == ".conf" and not INTERFACE_NAME.match(output.stem):
        raise BadConfigName(
            f"wg-quick cannot bring up {output.name!r}: the interface is named after the "
            "file, at most 15 of a-z A-Z 0-9 _ = + . - (or give a directory: ztb picks "
            f"{config_interface_name(home_name)}.conf)"
        )
    write_secret(output, config)
    return output
