"""Request head limits and the request read deadline on the broker's real HTTPS listener.

The 100 MB header test runs ``ztb broker serve`` as its own process so its RSS can be read
from /proc; the others serve the app in a thread with a short read deadline.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from broker import http_limits
from broker.app import create_app
from broker.bootstrap import bootstrap
from broker.config import Settings
from broker.tls_server import https_config

STARTUP_TIMEOUT_S = 20.0
HUNDRED_MB = 100 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tls(ca: Path, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _answer(sock: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes (or 10 s pass)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (OSError, ssl.SSLError):
        pass
    return b"".join(chunks)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Served:
    def __init__(self, url: str, ca: Path, port: int) -> None:
        self.url, self.ca, self.port = url, ca, port

    def healthz_ms(self, client: httpx.Client) -> float:
        start = time.perf_counter()
        assert client.get(self.url + "/healthz").status_code == 200
        return (time.perf_counter() - start) * 1000


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[tuple[Served, subprocess.Popen[bytes]]]:
    data_dir = tmp_path / "broker"
    ztb = [sys.executable, "-m", "ztb"]
    subprocess.run(
        [*ztb, "broker", "bootstrap", "--data-dir", str(data_dir), "--tls-name", "127.0.0.1"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    process = subprocess.Popen(
        [*ztb, "broker", "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = Served(f"https://127.0.0.1:{port}", data_dir / "ca.pem", port)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                httpx.get(served.url + "/healthz", verify=str(served.ca), timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("broker did not start") from None
                time.sleep(0.1)
        yield served, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_100_mb_header_is_cut_early_without_growing_the_broker(
    broker_process: tuple[Served, subprocess.Popen[bytes]],
) -> None:
    served, process = broker_process
    latencies: list[float] = []
    rss_samples: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(verify=str(served.ca), timeout=10) as client:
            while not stop.is_set():
                latencies.append(served.healthz_ms(client))
                rss_samples.append(_rss_kib(process.pid))
                time.sleep(0.05)

    with httpx.Client(verify=str(served.ca)) as client:
        for _ in range(20):  # warm the process up before taking its size
            served.healthz_ms(client)
    rss_before = _rss_kib(process.pid)
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    sock = _tls(served.ca, served.port)
    sent, chunk, started = 0, b"a" * 65536, time.monotonic()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        while sent < HUNDRED_MB and time.monotonic() - started < 60:
            sock.sendall(chunk)
            sent += len(chunk)
    except (OSError, ssl.SSLError):
        pass
    answer = _answer(sock)
    sock.close()
    time.sleep(0.3)
    stop.set()
    prober.join(timeout=15)
    rss_growth_mib = (max(rss_samples) - rss_before) / 1024
    print(
        f"sent {sent / 2**20:.1f} MiB before the cut; RSS +{rss_growth_mib:.1f} MiB; "
        f"/healthz median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms"
    )
    assert sent < 8 * 1024 * 1024, "the broker kept reading the header"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert rss_growth_mib < 5
    assert statistics.median(latencies) < 200  # was ~600 ms before the limits (shared CPU)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The app over HTTPS in a thread, with a 1 s request read deadline."""
    monkeypatch.setattr(http_limits, "REQUEST_READ_TIMEOUT_S", 1.0)
    data_dir = tmp_path / "broker"
    settings = Settings(data_dir=data_dir, tls_names=("127.0.0.1",))
    bootstrap(settings, "admin@example.com")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        https_config(
            create_app(settings), data_dir, "127.0.0.1", port, log_config=None, access_log=False
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "broker did not start"
            time.sleep(0.02)
        yield Served(f"https://127.0.0.1:{port}", data_dir / "ca.pem", port)
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()


def _raw(served: Served, request: bytes) -> bytes:
    sock = _tls(served.ca, served.port)
    with contextlib.suppress(OSError, ssl.SSLError):
        sock.sendall(request)
    answer = _answer(sock)
    sock.close()
    return answer


def test_too_many_header_lines_answer_431(served: Served) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(http_limits.MAX_HEADERS + 1))
    answer = _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"detail": "too many header lines"' in answer


def test_a_head_over_the_byte_limit_in_one_piece_answers_431(served: Served) -> None:
    big = b"X-Big: " + b"a" * http_limits.MAX_HEAD_BYTES + b"\r\n"
    answer = _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_an_overlong_request_line_answers_414(served: Served) -> None:
    path = b"/healthz?" + b"a" * http_limits.MAX_URL_BYTES
    answer = _raw(served, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 ")


def test_a_normal_request_within_the_limits_is_served(served: Served) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(http_limits.MAX_HEADERS - 2))
    answer = _raw(
        served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_slow_head_is_timed_out_with_408(served: Served) -> None:
    sock = _tls(served.ca, served.port)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    try:
        for _ in range(10):  # one header byte every 0.3 s: never finishes in time
            sock.sendall(b"X")
            time.sleep(0.3)
    except (OSError, ssl.SSLError):
        pass
    answer = _answer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


def test_a_slow_body_is_cut_off(served: Served) -> None:
    sock = _tls(served.ca, served.port)
    started = time.monotonic()
    sock.sendall(
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    try:
        for _ in range(10):
            sock.sendall(b" ")
            time.sleep(0.3)
    except (OSError, ssl.SSLError):
        pass
    _answer(sock)
    sock.close()
    assert time.monotonic() - started < 3


def test_an_idle_connection_is_closed(served: Served) -> None:
    sock = _tls(served.ca, served.port)
    started = time.monotonic()
    answer = _answer(sock)
    sock.close()
    assert time.monotonic() - started < 3
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")


def test_a_kept_alive_connection_idle_between_requests_is_not_cut(served: Served) -> None:
    """The deadline covers receiving a request, not the pause before the next one."""
    with httpx.Client(verify=str(served.ca)) as client:
        for _ in range(2):
            assert client.get(served.url + "/healthz").status_code == 200
            time.sleep(1.5)
        assert client.get(served.url + "/healthz").status_code == 200
