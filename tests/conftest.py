"""Shared test policy: lab tests run as root with real tools, and never skip under CI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import golden
from tests.prerequisites import missing_tools, unavailable

LAB_TOOLS = ("ip", "nft", "wg", "wg-quick", "wireguard-go")


def lab_prerequisites_missing() -> list[str]:
    missing = missing_tools(LAB_TOOLS)
    if os.geteuid() != 0:
        missing.append("root")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the golden files under tests/testdata instead of comparing (review the diff)",
    )


def pytest_configure(config: pytest.Config) -> None:
    golden.UPDATE = bool(config.getoption("--update-golden"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``lab`` tests need root and the lab's tools; ``tools(...)`` tests need those
    programs. Missing ones skip locally and fail under CI=true (``tests.prerequisites``)."""
    missing = [tool for marker in item.iter_markers("tools") for tool in missing_tools(marker.args)]
    if item.get_closest_marker("lab") is not None:
        missing += [name for name in lab_prerequisites_missing() if name not in missing]
    if missing:
        unavailable(f"test needs: {', '.join(missing)}")


@pytest.fixture(autouse=True)
def _clean_ztb_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the caller's broker, token or CA settings, nor an exported
    ``UPDATE_GOLDEN`` (golden files are rewritten only with ``--update-golden``)."""
    for name in list(os.environ):
        if name.startswith("ZTB_") or name == "UPDATE_GOLDEN":
            monkeypatch.delenv(name)
    yield
