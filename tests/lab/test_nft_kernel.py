"""The compiled table is accepted by the real kernel and reads back as compiled."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from netpolicy import nft
from tests.unit.test_nft_compile import REMAINING, golden_state

pytestmark = pytest.mark.lab


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"ztbk-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft_json(ns: str, document: dict[str, object] | None, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", *args],
        input=json.dumps(document) if document is not None else None,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_compiled_table_loads_and_lists_back(netns: str) -> None:
    desired = nft.desired_elements(golden_state(), REMAINING)
    commands = nft.table_commands("wg-ztb") + nft.diff_commands(nft.diff_elements({}, desired))
    nft_json(netns, nft.script(commands), "-f", "-")
    listing = json.loads(nft_json(netns, None, "list", "table", "inet", "ztb"))
    kernel = nft.parse_set_listing(listing)
    assert set(kernel) == set(desired)
    for key, element in kernel.items():
        assert desired[key] - 1 <= element.expires <= desired[key]


def test_skeleton_is_idempotent_and_keeps_elements(netns: str) -> None:
    desired = nft.desired_elements(golden_state(), REMAINING)
    nft_json(netns, nft.script(nft.table_commands("wg-ztb")), "-f", "-")
    nft_json(netns, nft.script(nft.diff_commands(nft.diff_elements({}, desired))), "-f", "-")
    first = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "chain", "inet", "ztb", "from_tunnel"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nft_json(netns, nft.script(nft.table_commands("wg-ztb")), "-f", "-")
    again = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "chain", "inet", "ztb", "from_tunnel"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert first == again
    listing = json.loads(nft_json(netns, None, "list", "table", "inet", "ztb"))
    assert set(nft.parse_set_listing(listing)) == set(desired)
