"""The broker source driving the real run loop on fake backends, over a fake transport.

Each test steps the network side (``fetch_once``, ``send_report_once``) and the run loop
(``Runner.step``) by hand, so nothing depends on thread timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.broker_link.http_lite import BrokerLink, Reply
from agent.broker_link.source import BrokerSource, RenewalOutcome, renew_in_child
from agent.runner import Runner
from agent.state_dir import CertificateValidity, StateDir
from agent.wireguard.backend import PeerConfig
from netpolicy import AgentReport
from netpolicy.nft import ElementKey
from tests.unit.test_agent_broker_client import FakeTransport, Sent, reply
from tests.unit.test_agent_reconcile import Rig, key, make_session, make_state

ISSUED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
VALIDITY = CertificateValidity("0a", ISSUED, ISSUED + timedelta(hours=24))
Answer = Reply | Callable[[Sent], Reply]


@dataclass
class FakeBroker:
    """Answers GET /v1/agent/state from a script; records everything it is sent."""

    answers: list[Answer] = field(default_factory=list)
    requests: list[Sent] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    report_status: int = 204

    def __call__(self, request: Sent) -> Reply:
        self.requests.append(request)
        if request.path == "/v1/agent/report":
            self.reports.append(request.body)
            return reply(self.report_status)
        assert (request.method, request.path) == ("GET", "/v1/agent/state")
        answer = self.answers.pop(0) if self.answers else reply(204)
        return answer(request) if callable(answer) else answer

    def fetches(self) -> list[dict[str, str]]:
        return [r.params for r in self.requests if r.path == "/v1/agent/state"]


@dataclass
class Setup:
    rig: Rig
    broker: FakeBroker
    source: BrokerSource
    runner: Runner
    connects: list[int]
    renewals: list[int]
    wall: list[datetime]


def state_dir(path: Path, validity: CertificateValidity = VALIDITY) -> StateDir:
    state = StateDir(path)
    state.write_client_identity("certificate", "key", validity)
    return state


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    rig, broker = Rig(), FakeBroker()
    connects: list[int] = []
    renewals: list[int] = []
    wall = [ISSUED + timedelta(hours=1)]

    def connect() -> BrokerLink:
        connects.append(1)
        return BrokerLink(FakeTransport(broker))

    def renew(path: Path, failures: int) -> RenewalOutcome:
        renewals.append(failures)
        return RenewalOutcome(True, wall[0] + timedelta(hours=16), 0)

    stop = threading.Event()
    source = BrokerSource(
        state_dir(tmp_path),
        stop,
        connect=connect,
        renew=renew,
        clock=rig.clock,
        wall=lambda: wall[0],
        rand=lambda: 0.5,
    )
    runner = Runner(rig.reconciler, source, stop, clock=rig.clock, reporter=source.report)
    yield Setup(rig, broker, source, runner, connects, renewals, wall)
    stop.set()


def document(revision: int, *sessions: int, expires_in: float = 600.0) -> Reply:
    state = make_state(revision, *(make_session(n, expires_in=expires_in) for n in sessions))
    return reply(200, state.to_dict())


def test_new_revision_is_applied_and_reported(setup: Setup) -> None:
    def slow_answer(request: Sent) -> Reply:
        setup.rig.clock.advance(20)  # the long-poll waited 20 s before the revision moved
        return document(1, 1)

    setup.broker.answers = [slow_answer, document(2, 1, 2)]
    assert setup.source.fetch_once() == 0.0  # straight back to the long-poll
    setup.runner.step()
    assert list(setup.rig.wg.peers) == [key(1)]
    # expires_in counts from the answer's arrival, not from when the request went out.
    assert setup.rig.reconciler.remaining() == {"s1": 600.0}
    assert setup.source.send_report_once() == 0.0
    report = setup.broker.reports[-1]
    assert report["revision"] == 1
    assert report["elements"] == [
        {
            "session_id": "s1",
            "device_ip": "192.168.1.10",
            "proto": "tcp",
            "ports": "443",
            "packets": 0,
            "bytes": 0,
            "final": False,
        }
    ]
    assert report["peers"] == [
        {"public_key": key(1), "last_handshake": None, "rx_bytes": 0, "tx_bytes": 0}
    ]

    setup.source.fetch_once()
    setup.runner.step()
    assert sorted(setup.rig.wg.peers) == [key(1), key(2)]
    setup.source.send_report_once()
    # Between periodic reports, an apply reports its revision alone: empty lists leave
    # the broker's counters as they are.
    assert setup.broker.reports[-1] == {"version": 1, "revision": 2, "peers": [], "elements": []}
    assert [f["after"] for f in setup.broker.fetches()] == ["-1", "1"]
    assert {f["wait"] for f in setup.broker.fetches()} == {"25"}


def test_no_change_applies_nothing(setup: Setup) -> None:
    setup.broker.answers = [document(1, 1), reply(204)]
    setup.source.fetch_once()
    setup.runner.step()
    transactions = len(setup.rig.nft.transactions)
    assert setup.source.fetch_once() == 0.0
    assert setup.source.poll(0) is None
    setup.runner.step()
    assert len(setup.rig.nft.transactions) == transactions
    assert setup.broker.fetches()[-1]["after"] == "1"


def test_unreachable_broker_backs_off_and_keeps_what_is_enforced(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(request: Sent) -> Reply:
        raise ConnectionRefusedError(111, "connection refused")

    setup.broker.answers = [document(1, 1), refused, reply(503), refused, document(2)]
    setup.source.fetch_once()
    setup.runner.step()
    before = setup.rig.text()
    transactions = len(setup.rig.nft.transactions)
    capsys.readouterr()
    delays = [setup.source.fetch_once() for _ in range(3)]
    assert delays == [0.75, 1.5, 3.0]  # jittered exponential backoff (rand fixed at 0.5)
    for _ in range(3):
        setup.runner.step()
    assert setup.rig.text() == before  # nothing new, nothing dropped
    assert len(setup.rig.nft.transactions) == transactions
    lines = capsys.readouterr().err.strip().splitlines()
    failures = [line for line in lines if "event=broker_fetch_failed" in line]
    assert len(failures) == 3
    assert "connection refused" in failures[0] and "503" in failures[1]
    assert all("enforcing_revision=1" in line for line in failures)
    # Back: the next document (the session was revoked meanwhile) goes in at once.
    assert setup.source.fetch_once() == 0.0
    assert "event=broker_reconnected after_failures=3" in capsys.readouterr().err
    setup.runner.step()
    assert setup.rig.wg.peers == {}


def test_refused_certificate_stops_fetching_but_the_kernel_keeps_enforcing(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.broker.answers = [document(1, 1, expires_in=30), reply(401, {})]
    setup.source.fetch_once()
    setup.runner.step()
    assert setup.source.fetch_once() is None
    assert setup.source.rejected
    err = capsys.readouterr().err
    assert "event=certificate_rejected level=CRITICAL" in err
    asked = len(setup.broker.requests)
    assert setup.source.fetch_once() is None
    assert len(setup.broker.requests) == asked  # no more requests
    setup.runner.step()
    assert list(setup.rig.wg.peers) == [key(1)]  # still enforced
    setup.rig.clock.advance(29.5)  # the local timer still ends the session on time
    setup.runner.step()
    assert setup.rig.wg.peers == {}
    assert setup.rig.nft.state_text() == ""


def test_expired_certificate_is_not_presented(setup: Setup) -> None:
    setup.wall[0] = VALIDITY.not_after + timedelta(seconds=1)
    assert setup.source.fetch_once() is None
    assert setup.source.rejected and setup.broker.requests == []


def test_renewal_runs_in_the_child_when_due_and_rebuilds_the_client(setup: Setup) -> None:
    setup.broker.answers = [document(1, 1)]
    setup.source.fetch_once()
    assert (setup.renewals, len(setup.connects)) == ([], 1)
    setup.wall[0] = VALIDITY.renew_at + timedelta(minutes=1)
    setup.source.fetch_once()
    assert setup.renewals == [0]
    assert len(setup.connects) == 2  # a fresh client with the new certificate


def test_failed_renewal_is_logged_and_retried_later(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []
    retry_at = VALIDITY.renew_at + timedelta(minutes=2)

    def failing(path: Path, failures: int) -> RenewalOutcome:
        calls.append(failures)
        return RenewalOutcome(False, retry_at, failures + 1, "WARNING", "broker said 503")

    setup.source._renew = failing
    setup.wall[0] = VALIDITY.renew_at + timedelta(minutes=1)
    setup.source.fetch_once()
    setup.source.fetch_once()  # before the retry time: no second child
    assert calls == [0]
    line = next(x for x in capsys.readouterr().err.splitlines() if "renewal_failed" in x)
    assert "level=WARNING" in line and "broker said 503" in line
    setup.wall[0] = retry_at
    setup.source.fetch_once()
    assert calls == [0, 1]
    assert len(setup.connects) == 1  # no new client without a new certificate


def test_renewal_child_reports_as_json(tmp_path: Path) -> None:
    """The real child process: a certificate not yet due needs no broker."""
    now = datetime.now(UTC)
    state_dir(tmp_path, CertificateValidity("0b", now, now + timedelta(hours=24)))
    outcome = renew_in_child(tmp_path, 0)
    assert not outcome.renewed and outcome.error is None
    assert outcome.next_attempt == now + timedelta(hours=16)
    broken = renew_in_child(tmp_path / "missing", 2)
    assert not broken.renewed and broken.failures == 3 and broken.level == "ERROR"
    assert "client.json is missing" in (broken.error or "")


def test_report_failures_keep_the_newest_payload(setup: Setup) -> None:
    setup.broker.report_status = 503
    setup.source.report(AgentReport(1))
    assert setup.source.send_report_once() == 0.75
    setup.broker.report_status = 204
    assert setup.source.send_report_once() == 0.0
    assert [r["revision"] for r in setup.broker.reports] == [1, 1]
    assert setup.source.send_report_once() == 0.0  # nothing waiting
    assert len(setup.broker.reports) == 2


def test_report_leaves_out_what_no_session_owns() -> None:
    rig = Rig()
    assert rig.reconciler.report().report is None  # no document yet: no revision to report
    rig.reconciler.apply(make_state(4, make_session(1)))
    rig.wg.set_peer(PeerConfig(key(9), ("100.64.0.99/32",)))  # an orphan peer, until the resync
    orphan = ElementKey(4, "100.64.0.99", "192.168.1.10", "tcp", 22, 22)
    rig.nft.run([{"add": {"element": {"family": "inet", "table": "ztb", "name": "grants4",
                 "elem": [{"elem": {"val": orphan.value(), "timeout": 60}}]}}}])  # fmt: skip
    reading = rig.reconciler.report()
    assert len(reading.status["elements"]) == 2 and len(reading.status["peers"]) == 2
    assert reading.report is not None
    assert [e.session_id for e in reading.report.elements] == ["s1"]
    assert [p.public_key for p in reading.report.peers] == [key(1)]
