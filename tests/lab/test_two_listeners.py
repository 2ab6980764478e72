"""Issue 13: a public-CA-style certificate on the people's listener while the agent keeps
working on its own mTLS listener pinned to the ztb CA.

The broker serves people on 198.51.100.2:8444 with a certificate from a CA that is not
the deployment's (as a public CA would be; every person's CLI trusts only that root) and
agents on :8443 with the ztb CA. The whole story runs through it: enrollment and
long-polls on the agents' port, request / approve / connect / revoke on the people's
port, and the revoke still drops a running flow within 1 s.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from broker import pki
from lab import demo_story, netns
from lab.broker_lab import BrokerLab, PeopleListener
from lab.demo_dataplane import Story
from lab.demo_story import Plot
from lab.harness import Lab
from lab.latency import GRANTS, close_access, open_access
from lab.topology import BROKER_IP, BROKER_PORT

pytestmark = pytest.mark.lab

PEOPLE_PORT = 8444
REVOKE_BOUND_S = 1.0


def _public_style_listener(where: Path) -> PeopleListener:
    now = datetime.now(UTC)
    root = pki.create_ca(now, "Example Public Root")
    key = pki.new_private_key()
    cert = pki.issue_server_certificate(root, key.public_key(), [str(BROKER_IP)], now)
    where.mkdir(parents=True)
    listener = PeopleListener(
        PEOPLE_PORT, where / "site.pem", where / "site.key", where / "root.pem"
    )
    listener.root.write_text(root.certificate_pem)
    listener.cert.write_text(pki.certificate_pem(cert))
    listener.key.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    listener.key.chmod(0o600)
    return listener


@pytest.fixture(scope="module")
def plot() -> Iterator[Plot]:
    with Lab(technicians=1, start_agent=False, connect_technicians=False) as lab:
        people = _public_style_listener(lab.run_dir / "public-tls")
        plot = Plot(Story(lab, print), BrokerLab(lab, people))
        for step in (demo_story.start_broker, demo_story.set_up_home, demo_story.enroll_agent):
            step(plot)
        assert plot.story.ok, plot.story.failures
        yield plot


def _handshake(ns: str, port: int, ca_file: Path) -> None:
    """A TLS handshake from ``ns`` trusting only ``ca_file``; raises if not trusted."""
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(5)
    with raw, context.wrap_socket(raw, server_hostname=str(BROKER_IP)) as tls:
        tls.connect((str(BROKER_IP), port))


def test_each_listener_shows_its_own_certificate(plot: Plot) -> None:
    broker, host = plot.broker, plot.lab.topo.host
    assert broker.people is not None
    _handshake(host, PEOPLE_PORT, broker.people.root)
    _handshake(host, BROKER_PORT, broker.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(host, BROKER_PORT, broker.people.root)  # agents' port: only the ztb CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(host, PEOPLE_PORT, broker.ca_cert)  # what an agent's pin would refuse


def test_story_over_the_public_listener_and_revoke_within_one_second(plot: Plot) -> None:
    """The revoke is timed from the broker's record of it (``ended_at``), so the
    homeowner's CLI start-up (~1 s of Python on a loaded machine) is not counted; the
    CLI-inclusive figure is printed too."""
    people = plot.cli()
    session_id = people.request(GRANTS, 30 * 60)
    opened = open_access(people, session_id)
    print(f"\napproval recorded -> connected {opened.to_connect * 1000:.0f} ms")
    plot.story.failures.clear()
    demo_story.only_the_grant(plot)
    assert plot.story.ok, plot.story.failures
    closed = close_access(people, session_id)
    assert people.show(session_id)["end_reason"] == "revoked"
    assert closed.arrived > 0
    with_cli = closed.first_drop - closed.call_started
    print(
        f"revoke -> drop {closed.to_drop * 1000:.0f} ms after the broker revoked "
        f"({with_cli * 1000:.0f} ms after the CLI started); people on the public listener"
    )
    assert closed.to_drop <= REVOKE_BOUND_S
