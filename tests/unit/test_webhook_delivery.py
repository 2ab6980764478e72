"""One home's slow webhook target must not delay another home's notifications."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from broker.webhook_targets import WebhookTargets, parse_networks

from .broker_harness import Harness, anyio_backend, harness
from .http_receiver import QuietHandler, serving

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio


class Arrivals(QuietHandler):
    times: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Arrivals.times.append(time.monotonic())
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[str]:
    Arrivals.times = []
    with serving(Arrivals) as url:
        yield url


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"


async def test_a_target_that_never_answers_does_not_delay_another_home(
    harness: Harness, receiver: str, black_hole: str
) -> None:
    h = harness
    w = await h.world()
    h.broker.webhooks.targets = WebhookTargets(parse_networks(["127.0.0.0/8"]))
    await h.ok("PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json={"webhook_url": black_hole})
    await h.ok("PATCH", f"/v1/homes/{w.home_b}", w.owner_b, json={"webhook_url": receiver})
    for _ in range(3):  # home A's lane: several deliveries, each stuck until its timeout
        await h.request(w.tech_a, "ann-house", ["tv:tcp/443"])
    time.sleep(0.2)  # A's deliveries are now hanging on the black hole
    sent = time.monotonic()
    await h.request(w.tech_b, "bert-flat", ["camera:tcp/443"])
    deadline = sent + 2.0
    while not Arrivals.times and time.monotonic() < deadline:
        time.sleep(0.02)
    assert Arrivals.times, "home B's webhook did not arrive within 2 s"
    print(f"home B's webhook arrived after {Arrivals.times[0] - sent:.3f} s")
