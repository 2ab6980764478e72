"""Shared test policy: lab tests run as root with real tools, and never skip under CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

LAB_TOOLS = ("ip", "nft", "wg", "wg-quick", "wireguard-go")


def lab_prerequisites_missing() -> list[str]:
    missing = [tool for tool in LAB_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is None:
        return
    missing = lab_prerequisites_missing()
    if not missing:
        return
    message = f"lab test needs: {', '.join(missing)}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: lab tests must run, not skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _clean_ztb_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the caller's broker, token or CA settings."""
    for name in list(os.environ):
        if name.startswith("ZTB_"):
            monkeypatch.delenv(name)
    yield
