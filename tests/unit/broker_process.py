"""A real ``ztb broker serve`` process on a free loopback port, and the ``ztb`` command run
as an operator would run it: for the deployment tests (restore, replicas, migrations)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServedBroker:
    url: str
    ca_cert: Path
    process: subprocess.Popen[str]

    def ztb(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        """A client command against this broker, trusting its CA."""
        return ztb(
            *args,
            env={"ZTB_BROKER": self.url, "ZTB_TOKEN": token, "ZTB_CA_CERT": str(self.ca_cert)},
        )


def ztb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztb", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_argv(data_dir: Path, port: int, db: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "ztb", "broker", "serve", "--data-dir", str(data_dir)]
    argv += ["--listen", f"127.0.0.1:{port}"]
    return argv + (["--db", db] if db else [])


def _healthy(url: str, ca_cert: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(f"{url}/healthz", context=context, timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_until_serving(process: subprocess.Popen[str], url: str, ca_cert: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (ca_cert.exists() and _healthy(url, ca_cert)):
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise RuntimeError(f"broker exited with {process.returncode}: {stderr.strip()}")
        if time.monotonic() > deadline:
            raise RuntimeError("broker did not come up")
        time.sleep(0.1)


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@contextmanager
def served(data_dir: Path, db: str | None = None) -> Iterator[ServedBroker]:
    port = free_port()
    process = start(serve_argv(data_dir, port, db))
    url = f"https://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, data_dir / "ca.pem")
        yield ServedBroker(url, data_dir / "ca.pem", process)
    finally:
        stop(process)


def refused_start(data_dir: Path, db: str | None = None) -> str:
    """``serve`` must exit at once with an error: its stderr."""
    result = subprocess.run(
        serve_argv(data_dir, free_port(), db), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0, "the broker started"
    return result.stderr.strip()
