"""nftables behind one small interface: one JSON document per call, so one transaction.

Two real implementations, picked at run time (override first, then probe, like
Tailscale's linuxfw detector): the libnftables binding (no process per call) and the
``nft -j -f -`` binary (works wherever the nft tool does). A document that fails changes
nothing: nftables applies a whole document atomically or not at all.

``read_elements`` reads the counters of a few elements without listing the sets (cost
follows the keys asked for, not the set size): one text ``get element`` command per key in
one call. nft 1.0.6 has no JSON ``get`` command and prints ``get element`` as text even
with ``-j``, so the read uses the text syntax both ways. A key the kernel no longer holds
(expired) fails its command and stops the rest of that call; the reader skips it and asks
again for the keys after it, within a few milliseconds' budget.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Collection, Iterable
from ipaddress import ip_address
from typing import Any, Literal, Protocol

from netpolicy.grants import PROTOCOLS
from netpolicy.nft import (
    FAMILY,
    TABLE,
    Command,
    ElementKey,
    KernelElement,
    delete_table_command,
    script,
)

NftChoice = Literal["auto", "lib", "binary"]
Listing = dict[str, Any]
# nft's own words when a table (or anything else named) does not exist.
_MISSING = "No such file or directory"
_TIMEOUT_S = 60
# Counter reads stand in front of a revoke: they must never hold it up for long.
READ_BUDGET_S = 0.005
_READ_TIMEOUT_S = 1.0
# ``tunnel . device . proto . port[-port] counter packets N bytes M`` in nft's text output.
_ELEMENT_TEXT = re.compile(
    r"([0-9A-Fa-f:.]+) \. ([0-9A-Fa-f:.]+) \. (\w+) \. (\d+)(?:-(\d+))?"
    r" counter packets (\d+) bytes (\d+)"
)
_PROTO_NUMBERS = {"6": "tcp", "17": "udp"}  # nft prints numbers without /etc/protocols
# Runs a text script: whether all of it succeeded, and the output of what did.
TextRunner = Callable[[str], tuple[bool, str]]


class NftError(RuntimeError):
    """nft refused a document; the message carries nft's own error text."""


class NftBackend(Protocol):
    kind: str

    def run(self, commands: list[Command]) -> None:
        """Apply ``commands`` as one transaction, or raise NftError having changed nothing."""

    def list_table(self) -> Listing:
        """``list table inet ztb`` as parsed JSON; ``{"nftables": []}`` if there is no table."""

    def read_elements(
        self, keys: Collection[ElementKey], budget_s: float = READ_BUDGET_S
    ) -> dict[ElementKey, KernelElement]:
        """Counters of ``keys`` only; keys the kernel no longer holds are left out.

        Raises NftError or OSError when nft cannot be asked at all.
        """


def _list_command() -> Command:
    return {"list": {"table": {"family": FAMILY, "name": TABLE}}}


def _error(text: str) -> NftError:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return NftError("nft: " + (" | ".join(lines[:3]) or "failed without a message"))


def get_element_command(key: ElementKey) -> str:
    """``get element`` for one key in nft's text syntax (every part is validated data)."""
    ports = str(key.first) if key.first == key.last else f"{key.first}-{key.last}"
    value = f"{key.tunnel_ip} . {key.device_ip} . {key.proto} . {ports}"
    return f"get element {FAMILY} {TABLE} {key.set_name} {{ {value} }}"


def parse_get_output(text: str) -> dict[ElementKey, KernelElement]:
    """The elements and counters in the text output of ``get element`` commands."""
    found: dict[ElementKey, KernelElement] = {}
    for match in _ELEMENT_TEXT.finditer(text):
        tunnel, device, proto, first, last, packets, octets = match.groups()
        proto = _PROTO_NUMBERS.get(proto, proto)
        if proto not in PROTOCOLS:
            continue
        try:
            tunnel_ip, device_ip = ip_address(tunnel), ip_address(device)
        except ValueError:
            continue
        key = ElementKey(
            tunnel_ip.version,
            str(tunnel_ip),
            str(device_ip),
            proto,  # type: ignore[arg-type]  # checked against PROTOCOLS above
            int(first),
            int(last or first),
        )
        found[key] = KernelElement(0, int(packets), int(octets))
    return found


def read_with(
    run_text: TextRunner, keys: Iterable[ElementKey], budget_s: float
) -> dict[ElementKey, KernelElement]:
    """Ask for every key in one call; after a failure, skip the key that failed and go on.

    nft runs the commands in order and stops at the first missing element, printing what
    it read before; so the first asked key missing from the output is the one that failed.
    The first call always runs; later ones only while ``budget_s`` lasts.
    """
    pending = sorted(set(keys))
    found: dict[ElementKey, KernelElement] = {}
    deadline = time.perf_counter() + budget_s
    while pending:
        ok, output = run_text("\n".join(get_element_command(key) for key in pending))
        read = parse_get_output(output)
        found.update((key, read[key]) for key in pending if key in read)
        if ok or time.perf_counter() >= deadline:
            break
        failed = next((i for i, key in enumerate(pending) if key not in read), len(pending))
        pending = [key for key in pending[failed + 1 :] if key not in found]
    return found


class LibNftables:
    """The libnftables binding (``pip-nftables`` + Debian ``libnftables1``)."""

    kind = "lib"

    def __init__(self) -> None:
        import nftables  # lazily: the binding loads a shared library

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)

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

    def read_elements(
        self, keys: Collection[ElementKey], budget_s: float = READ_BUDGET_S
    ) -> dict[ElementKey, KernelElement]:
        return read_with(self._text, keys, budget_s) if keys else {}

    def _text(self, text: str) -> tuple[bool, str]:
        # Text output whatever the nft version: newer ones may print ``get`` as JSON.
        self._nft.set_json_output(False)
        try:
            rc, output, _ = self._nft.cmd(text)
        finally:
            self._nft.set_json_output(True)
        return int(rc) == 0, str(output)


class NftBinary:
    """The ``nft`` binary, fed JSON on stdin: one process per transaction."""

    kind = "binary"

    def __init__(self, nft: str = "nft") -> None:
        self._nft = nft

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

    def read_elements(
        self, keys: Collection[ElementKey], budget_s: float = READ_BUDGET_S
    ) -> dict[ElementKey, KernelElement]:
        return read_with(self._text, keys, budget_s) if keys else {}

    def _text(self, text: str) -> tuple[bool, str]:
        done = subprocess.run(
            [self._nft, "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=_READ_TIMEOUT_S,
            check=False,
        )
        return done.returncode == 0, done.stdout


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
