"""Webhook targets: public addresses only unless the operator allows a private network;
checked when set (422 with the reason) and again at delivery, connecting to the checked
address; redirects are not followed."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from typing import Any

import pytest
from sqlalchemy import update

from broker.db.models import Home
from broker.webhook_targets import WebhookTargets, parse_networks, why_not_public

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # CGNAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "198.51.100.7",  # documentation
    "::1",
    "::",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"]


@pytest.mark.parametrize("text", REFUSED)
def test_non_public_addresses_are_refused(text: str) -> None:
    assert why_not_public(ip_address(text)) is not None


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    assert why_not_public(ip_address(text)) is None


def fixed(*addresses: str) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def test_every_resolved_address_must_pass() -> None:
    targets = WebhookTargets(resolve=fixed("93.184.216.34", "10.0.0.5"))
    with pytest.raises(ValueError, match=re.escape("10.0.0.5, a private address")):
        targets.check("https://hooks.example.com/x")


def test_the_operator_allow_list_admits_a_private_network() -> None:
    targets = WebhookTargets(parse_networks(["10.0.0.0/8"]), resolve=fixed("10.0.0.5"))
    pinned = targets.check("https://hooks.internal:8443/x?y=1")
    assert str(pinned.url) == "https://10.0.0.5:8443/x?y=1"
    assert pinned.host_header == "hooks.internal:8443"
    assert pinned.sni_hostname == "hooks.internal"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:127.0.0.1]:9/x", "loopback"),
        ("http://localhost:8080/", "loopback"),
        ("http://100.64.0.1/", "not a public address"),
        ("ftp://example.com/", "http(s)"),
    ],
)
async def test_setting_a_private_webhook_is_refused_with_the_reason(
    harness: Harness, url: str, why: str
) -> None:
    h = harness
    w = await h.world()
    response = await h.call("PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json={"webhook_url": url})
    assert response.status_code == 422, response.text
    assert why in response.json()["detail"]
    home = await h.ok("GET", f"/v1/homes/{w.home_a}", w.owner_a)
    assert home["webhook_url"] is None


class Recorder(BaseHTTPRequestHandler):
    """Records every POST; answers with the status in ``Recorder.status`` (and a Location)."""

    hits: list[tuple[str, dict[str, str]]] = []
    status = 204
    location = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.hits.append((self.path, dict(self.headers)))
        self.send_response(Recorder.status)
        if Recorder.location:
            self.send_header("Location", Recorder.location)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[int]:
    Recorder.hits, Recorder.status, Recorder.location = [], 204, ""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def _one_event(h: Harness, tech: str) -> None:
    await h.request(tech, "ann-house", ["tv:tcp/443"])
    assert h.broker.webhooks.drain(10)


async def test_a_stored_private_target_is_refused_at_delivery(
    harness: Harness, recorder: int
) -> None:
    """A URL stored before this check existed (or set while allowed) is not called."""
    h = harness
    w = await h.world()
    url = f"http://127.0.0.1:{recorder}/hook"
    with h.broker.sessionmaker() as db:
        db.execute(update(Home).where(Home.id == w.home_a).values(webhook_url=url))
        db.execute(update(Home).where(Home.id == w.home_a).values(webhook_secret="s" * 43))
        db.commit()
    await _one_event(h, w.tech_a)
    assert Recorder.hits == []
    metrics = (await h.call("GET", "/metrics")).text
    assert 'ztb_webhook_deliveries_total{outcome="refused"} 1.0' in metrics


async def test_delivery_connects_to_the_checked_address_not_a_new_dns_answer(
    harness: Harness, recorder: int
) -> None:
    """DNS rebinding: the name is judged at delivery and the request goes to that address.

    ``hooks.test`` exists only in the test's resolver, so the delivery can reach the
    recorder only through the pinned address; the Host header still names the host.
    """
    h = harness
    w = await h.world()
    h.broker.webhooks.targets = WebhookTargets(
        parse_networks(["127.0.0.0/8"]), resolve=fixed("127.0.0.1")
    )
    url = f"http://hooks.test:{recorder}/hook"
    await h.ok("PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json={"webhook_url": url})
    await _one_event(h, w.tech_a)
    assert [(path, headers["Host"]) for path, headers in Recorder.hits] == [
        ("/hook", f"hooks.test:{recorder}")
    ]
    # The name now answers with an address outside the allow-list: nothing is sent.
    h.broker.webhooks.targets = WebhookTargets(
        parse_networks(["127.0.0.0/8"]), resolve=fixed("169.254.169.254")
    )
    await _one_event(h, w.tech_a)
    assert len(Recorder.hits) == 1


async def test_redirects_are_not_followed(harness: Harness, recorder: int) -> None:
    h = harness
    w = await h.world()
    h.broker.webhooks.targets = WebhookTargets(parse_networks(["127.0.0.0/8"]))
    Recorder.status, Recorder.location = 307, f"http://127.0.0.1:{recorder}/inside"
    url = f"http://127.0.0.1:{recorder}/hook"
    await h.ok("PATCH", f"/v1/homes/{w.home_a}", w.owner_a, json={"webhook_url": url})
    await _one_event(h, w.tech_a)
    assert {path for path, _ in Recorder.hits} == {"/hook"}
