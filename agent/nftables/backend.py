"""nftables behind one small interface: one JSON document per call, so one transaction.

Two real implementations, picked at run time (override first, then probe, like
Tailscale's linuxfw detector): the libnftables binding (no process per call) and the
``nft -j -f -`` binary (works wherever the nft tool does). A document that fails changes
nothing: nftables applies a whole document atomically or not at all.

Both read the counters of a few elements (``read_elements``) over netlink with
``agent.nftables.netlink``, because nft 1.0.6 loads the whole set to answer ``get element``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Collection
from typing import Any, Literal, Protocol

from netpolicy.nft import (
    FAMILY,
    TABLE,
    Command,
    ElementKey,
    KernelElement,
    delete_table_command,
    script,
)

from .netlink import ElementReader

NftChoice = Literal["auto", "lib", "binary"]
Listing = dict[str, Any]
# nft's own words when a table (or anything else named) does not exist.
_MISSING = "No such file or directory"
_TIMEOUT_S = 60


class NftError(RuntimeError):
    """nft refused a document; the message carries nft's own error text."""


class NftBackend(Protocol):
    kind: str

    def run(self, commands: list[Command]) -> None:
        """Apply ``commands`` as one transaction, or raise NftError having changed nothing."""

    def list_table(self) -> Listing:
        """``list table inet ztb`` as parsed JSON; ``{"nftables": []}`` if there is no table."""

    def read_elements(self, keys: Collection[ElementKey]) -> dict[ElementKey, KernelElement]:
        """Counters of ``keys`` only (cost follows the keys); ones the kernel lacks are left out.

        Raises OSError when the kernel cannot be asked.
        """


def _list_command() -> Command:
    return {"list": {"table": {"family": FAMILY, "name": TABLE}}}


def _error(text: str) -> NftError:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return NftError("nft: " + (" | ".join(lines[:3]) or "failed without a message"))


class LibNftables:
    """The libnftables binding (``pip-nftables`` + Debian ``libnftables1``)."""

    kind = "lib"

    def __init__(self) -> None:
        import nftables  # lazily: the binding loads a shared library

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._reader = ElementReader()

    def _cmd(self, commands: list[Command]) -> tuple[int, Any, str]:
        rc, output, error = self._nft.json_cmd(script(commands))
        return int(rc), output, str(error)

    def run(self, commands: list[Command]) -> None:
        if not commands:
            return
        rc, _, error = self._cmd(commands)
        if rc != 0:
            raise _error(error)

    def list_table(self) -> Listing:
        rc, output, error = self._cmd([_list_command()])
        if rc != 0:
            if _MISSING in error:
                return {"nftables": []}
            raise _error(error)
        return output if isinstance(output, dict) else {"nftables": []}

    def read_elements(self, keys: Collection[ElementKey]) -> dict[ElementKey, KernelElement]:
        return self._reader.read(keys)


class NftBinary:
    """The ``nft`` binary, fed JSON on stdin: one process per transaction."""

    kind = "binary"

    def __init__(self, nft: str = "nft") -> None:
        self._nft = nft
        self._reader = ElementReader()

    def _call(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._nft, "-j", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )

    def run(self, commands: list[Command]) -> None:
        if not commands:
            return
        done = self._call(["-f", "-"], json.dumps(script(commands)))
        if done.returncode != 0:
            raise _error(done.stderr)

    def list_table(self) -> Listing:
        done = self._call(["list", "table", FAMILY, TABLE])
        if done.returncode != 0:
            if _MISSING in done.stderr:
                return {"nftables": []}
            raise _error(done.stderr)
        parsed: Listing = json.loads(done.stdout)
        return parsed

    def read_elements(self, keys: Collection[ElementKey]) -> dict[ElementKey, KernelElement]:
        return self._reader.read(keys)


def make_nft(choice: NftChoice = "auto") -> NftBackend:
    """The backend asked for, or with ``auto`` the binding when it loads, else the binary."""
    if choice == "binary":
        return NftBinary()
    if choice == "lib":
        return LibNftables()
    try:
        return LibNftables()
    except (ImportError, OSError):
        return NftBinary()


def delete_table(backend: NftBackend) -> bool:
    """Remove ``table inet ztb`` (and nothing else); False when it was not there."""
    if not backend.list_table().get("nftables"):
        return False
    backend.run([delete_table_command()])
    return True
