"""The wheel and sdist `make dist` builds: what they ship, and that each extra installs and
runs on its own in a fresh virtualenv (pip reads the index this machine is set up with).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TOP_LEVEL = {"agent", "broker", "netpolicy", "ztb"}
INSTALL_TIMEOUT_S = 300
# Building and installing into fresh virtualenvs takes minutes on a loaded machine.
pytestmark = pytest.mark.timeout(2 * INSTALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return out


def _wheel(dist_dir: Path) -> Path:
    (wheel,) = dist_dir.glob("ztb-*.whl")
    return wheel


def test_wheel_ships_the_programs_and_no_lab_tests_or_fakes(dist_dir: Path) -> None:
    names = zipfile.ZipFile(_wheel(dist_dir)).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == SHIPPED_TOP_LEVEL
    assert not [name for name in names if "fake" in name or Path(name).stem == "conftest"]
    # What the broker reads at run time besides Python modules.
    for needed in (
        "broker/migrations/env.py",
        "broker/migrations/versions/0001_initial_schema.py",
        "broker/web/templates/base.html",
        "broker/web/static/ztb.css",
        "ztb/py.typed",
    ):
        assert needed in names


def test_sdist_carries_the_packaging_files(dist_dir: Path) -> None:
    import tarfile

    (sdist,) = dist_dir.glob("ztb-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[-1] for name in archive.getnames()}
    assert {"pyproject.toml", "packaging/systemd/ztb-broker.service", "docs/operations.md"} <= names


def _fresh_venv(where: Path, requirement: str) -> Path:
    venv.create(where, with_pip=True)
    subprocess.run(
        [str(where / "bin/python"), "-m", "pip", "install", "-q", "--no-compile", requirement],
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return where / "bin"


def _run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run from the venv's own directory, so this checkout is not on ``sys.path``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=bin_dir.parent,
        env=env,
    )


def test_agent_extra_alone_runs_the_agent_without_broker_dependencies(
    dist_dir: Path, tmp_path: Path
) -> None:
    bin_dir = _fresh_venv(tmp_path / "agent", f"{_wheel(dist_dir)}[agent]")
    helped = _run(bin_dir, "ztb", "agent", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "enroll" in helped.stdout
    for heavy in ("fastapi", "sqlalchemy", "lab", "tests"):
        missing = _run(bin_dir, "python", "-c", f"import {heavy}")
        assert missing.returncode != 0, f"{heavy} is importable from the agent's install"
    refused = _run(bin_dir, "ztb", "broker", "--help")
    assert refused.returncode != 0
    assert "install ztb[broker]" in refused.stderr


def test_broker_extra_bootstraps_a_broker_from_the_wheel(dist_dir: Path, tmp_path: Path) -> None:
    bin_dir = _fresh_venv(tmp_path / "broker", f"{_wheel(dist_dir)}[broker]")
    helped = _run(bin_dir, "ztb", "broker", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
    # Migrations and templates come from the wheel, not from this checkout.
    bootstrapped = _run(bin_dir, "ztb", "broker", "bootstrap", "--data-dir", str(tmp_path / "d"))
    assert bootstrapped.returncode == 0, bootstrapped.stderr
    assert bootstrapped.stdout.strip()
    assert _run(bin_dir, "python", "-c", "import lab").returncode != 0
