"""Final counters: read just before a session's elements go (revoke, expiry), reported at once.

Fake backends, and at the end the real broker app in-process, to show the final counters
land in the homeowner's session report after the session has ended.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from agent.counters import EXPIRY_READ_LEAD_S
from agent.desired_file import DesiredStateFile
from agent.runner import Runner
from netpolicy import AgentReport, DesiredState, ElementCounters, PortRange
from netpolicy.nft import ElementKey, KernelElement, parse_set_listing
from tests.unit.test_agent_broker_source import Setup, document, setup
from tests.unit.test_agent_reconcile import Rig, key, make_session, make_state
from tests.unit.test_agent_runner import write

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness", "setup"]


def element(n: int, port: int) -> ElementKey:
    """The element ``make_session(n, port)`` compiles to."""
    return ElementKey(4, f"100.64.0.{n + 1}", "192.168.1.10", "tcp", port, port)


def final(n: int, port: int, packets: int, octets: int) -> ElementCounters:
    ip = IPv4Address("192.168.1.10")
    return ElementCounters(f"s{n}", ip, "tcp", PortRange.single(port), packets, octets, True)


# ---------------------------------------------------------------- revoke
def test_revoke_reads_exactly_the_leaving_elements_before_deleting_them() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, 443, 8443), make_session(2, 22)))
    rig.nft.count(element(1, 443), 38, 2280)
    rig.nft.count(element(1, 8443), 2, 120)
    rig.nft.count(element(2, 22), 5, 300)
    journal: list[str] = []
    run, read = rig.nft.run, rig.nft.read_elements

    def journaled_run(commands: list[dict[str, Any]]) -> None:
        journal.append("delete")
        run(commands)

    def journaled_read(keys: Collection[ElementKey]) -> dict[ElementKey, KernelElement]:
        journal.append("read")
        return read(keys)

    rig.nft.run = journaled_run  # type: ignore[method-assign]
    rig.nft.read_elements = journaled_read  # type: ignore[method-assign]

    result = rig.reconciler.apply(make_state(2, make_session(2, 22)))

    assert (result.elements_deleted, result.peers_removed) == (2, 1)
    assert journal == ["read", "delete"]
    assert rig.nft.reads == [[element(1, 443), element(1, 8443)]]  # not s2, not the whole set
    assert rig.reconciler.take_final_counters() == [final(1, 443, 38, 2280), final(1, 8443, 2, 120)]
    assert rig.reconciler.take_final_counters() == []  # handed out once
    assert "100.64.0.2" not in rig.nft.state_text()


def test_unchanged_and_replaced_elements_are_not_read() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)))
    rig.reconciler.apply(make_state(1, make_session(1, expires_in=600)))
    # A new lifetime replaces the element (delete + add in one transaction): not leaving.
    result = rig.reconciler.apply(make_state(2, make_session(1, expires_in=300)))
    assert result.elements_deleted == 1 and result.elements_added == 1
    assert rig.nft.reads == []
    assert rig.reconciler.take_final_counters() == []


@pytest.mark.parametrize("error", [OSError("netlink: timed out"), ValueError("bad answer")])
def test_a_failed_read_never_blocks_the_delete(
    error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1), make_session(2)))
    rig.nft.fail_reads = error
    result = rig.reconciler.apply(make_state(2, make_session(2)))
    assert (result.elements_deleted, result.peers_removed) == (1, 1)
    assert "100.64.0.2" not in rig.nft.state_text()
    assert list(rig.wg.peers) == [key(2)]
    assert rig.reconciler.take_final_counters() == []
    assert "event=final_counters_failed" in capsys.readouterr().err


def test_elements_already_gone_are_skipped() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, 443, 8443)))
    rig.nft.count(element(1, 443), 7, 420)
    # Someone deleted one element behind the agent's back: its read finds nothing.
    rig.nft.run([{"delete": {"element": {"family": "inet", "table": "ztb", "name": "grants4",
                 "elem": [element(1, 8443).value()]}}}])  # fmt: skip
    rig.reconciler.apply(make_state(2))  # the retry on a fresh listing deletes what is left
    assert rig.reconciler.take_final_counters() == [final(1, 443, 7, 420)]


def test_after_a_relisting_the_leaving_elements_are_attributed_by_tunnel_address() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1), make_session(2)))
    rig.nft.count(element(1, 443), 4, 240)
    rig.reconciler.apply(make_state(2, make_session(2)), relist=True)  # the model starts over
    assert rig.reconciler.take_final_counters() == [final(1, 443, 4, 240)]


# ---------------------------------------------------------------- expiry
def test_counters_are_read_before_the_kernel_timeout_and_again_by_the_expiry_timer() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, 443, expires_in=10.5), make_session(2)))
    kernel_expiry = 1000.0 + 10  # the timeout is the lifetime rounded down
    assert rig.reconciler.next_counter_read() == pytest.approx(kernel_expiry - EXPIRY_READ_LEAD_S)
    rig.nft.count(element(1, 443), 10, 600)
    rig.clock.advance(8.0)
    assert rig.reconciler.read_expiring_counters() == 0  # not yet
    rig.clock.advance(0.6)
    assert rig.reconciler.read_expiring_counters() == 1
    assert rig.nft.reads == [[element(1, 443)]]  # s2 is far from its end
    assert rig.reconciler.take_final_counters() == [final(1, 443, 10, 600)]
    assert rig.reconciler.read_expiring_counters() == 0  # once per session
    assert rig.reconciler.next_counter_read() == pytest.approx(1000.0 + 600 - EXPIRY_READ_LEAD_S)

    rig.nft.count(element(1, 443), 28, 1680)  # traffic in the last seconds
    rig.clock.advance(1.0)  # under one second left: the expiry timer ends s1
    result = rig.reconciler.reapply()
    assert result is not None and result.elements_deleted == 1
    assert rig.reconciler.take_final_counters() == [final(1, 443, 38, 2280)]


def test_when_the_kernel_expires_first_the_earlier_read_stands() -> None:
    rig = Rig()
    rig.reconciler.apply(make_state(1, make_session(1, 443, expires_in=5)))
    rig.nft.count(element(1, 443), 3, 180)
    rig.clock.advance(5 - EXPIRY_READ_LEAD_S)
    rig.reconciler.read_expiring_counters()
    rig.clock.advance(2.0)  # the loop was late: the kernel already removed the element
    result = rig.reconciler.reapply()
    assert result is not None and (result.elements_deleted, result.peers_removed) == (0, 1)
    assert rig.nft.reads == [[element(1, 443)]]  # nothing asked for the gone element
    assert rig.reconciler.take_final_counters() == [final(1, 443, 3, 180)]


# ---------------------------------------------------------------- runner and reports
def file_runner(rig: Rig, tmp_path: Path) -> tuple[Runner, Path, list[AgentReport]]:
    path = tmp_path / "desired.json"
    sent: list[AgentReport] = []
    source = DesiredStateFile(path, sleep=lambda _: None, clock=rig.clock)
    runner = Runner(
        rig.reconciler, source, threading.Event(), clock=rig.clock, reporter=sent.append
    )
    return runner, path, sent


def test_runner_reports_final_counters_in_the_step_that_revokes(tmp_path: Path) -> None:
    rig = Rig()
    runner, path, sent = file_runner(rig, tmp_path)
    write(path, make_state(1, make_session(1), make_session(2)).to_json())
    runner.step()
    rig.nft.count(element(1, 443), 38, 2280)
    write(path, make_state(2, make_session(2)).to_json())
    sent.clear()
    runner.step()
    assert sent == [AgentReport(2, elements=(final(1, 443, 38, 2280),))]
    assert sent[0].to_dict()["elements"] == [
        {"session_id": "s1", "device_ip": "192.168.1.10", "proto": "tcp", "ports": "443",
         "packets": 38, "bytes": 2280, "final": True}
    ]  # fmt: skip


def test_runner_reads_and_reports_before_expiry_without_waiting_for_the_interval(
    tmp_path: Path,
) -> None:
    rig = Rig()
    runner, path, sent = file_runner(rig, tmp_path)
    write(path, make_state(1, make_session(1, expires_in=10.5), make_session(2)).to_json())
    runner.step()
    rig.nft.count(element(1, 443), 4, 240)
    # The loop sleeps no longer than until the counter read is due.
    assert runner._wait(rig.clock()) == pytest.approx(runner.poll_interval)
    rig.clock.advance(8.4)
    assert runner._wait(rig.clock()) == pytest.approx(0.1)
    sent.clear()
    rig.clock.advance(0.1)
    runner.step()
    assert sent == [AgentReport(1, elements=(final(1, 443, 4, 240),))]
    rig.nft.count(element(1, 443), 1, 60)
    rig.clock.advance(1.05)
    runner.step()  # the expiry timer removes s1 and reads it one last time
    assert sent[-1].elements == (final(1, 443, 5, 300),)
    assert rig.wg.peers.keys() == {key(2)}


def test_waiting_final_counters_survive_a_newer_report(setup: Setup) -> None:
    setup.broker.answers = [document(1, 1, 2), document(2, 2)]
    setup.source.fetch_once()
    setup.runner.step()
    setup.source.send_report_once()
    setup.rig.nft.count(element(1, 443), 38, 2280)
    setup.source.fetch_once()
    setup.runner.step()  # revoke: the finals report waits in the queue
    setup.runner.report(setup.rig.clock())  # a newer (periodic) report replaces it
    setup.broker.report_status = 503
    assert setup.source.send_report_once() == 0.75
    setup.runner.report(setup.rig.clock())  # and a newer one again while the first failed
    setup.broker.report_status = 204
    setup.source.send_report_once()
    last = setup.broker.reports[-1]
    assert [(e["session_id"], e["packets"], e["final"]) for e in last["elements"]] == [
        ("s1", 38, True),
        ("s2", 0, False),
    ]
    assert [p["public_key"] for p in last["peers"]] == [key(2)]


def test_source_keeps_the_newer_row_for_the_same_element(setup: Setup) -> None:
    setup.source.report(AgentReport(1, elements=(final(1, 443, 3, 180),)))
    setup.source.report(AgentReport(1, elements=(final(1, 443, 5, 300),)))
    setup.source.send_report_once()
    assert [e["packets"] for e in setup.broker.reports[-1]["elements"]] == [5]


# ---------------------------------------------------------------- with the real broker
@pytest.mark.anyio
async def test_revoked_session_report_shows_the_final_counters(harness: Harness) -> None:
    h = harness
    w = await h.world()
    sid = (await h.request(w.tech_a, "ann-house", ["thermostat:tcp/443"], public_key=key(7)))["id"]
    await h.ok("POST", f"/v1/sessions/{sid}/approve", w.owner_a)
    rig = Rig()
    live = DesiredState.from_dict(await h.ok("GET", "/v1/agent/state?after=0&wait=0", w.agent_a))
    rig.reconciler.apply(live)
    report = AgentReport(live.revision).to_dict()
    await h.ok("POST", "/v1/agent/report", w.agent_a, json=report)
    (tunnel,) = {k.tunnel_ip for k in parse_set_listing(rig.nft.list_table())}
    rig.nft.count(ElementKey(4, tunnel, "192.168.1.20", "tcp", 443, 443), 38, 2280)

    await h.ok("POST", f"/v1/sessions/{sid}/revoke", w.owner_a, json={"reason": "done"})
    ended = DesiredState.from_dict(
        await h.ok("GET", f"/v1/agent/state?after={live.revision}&wait=0", w.agent_a)
    )
    rig.reconciler.apply(ended)
    finals = rig.reconciler.take_final_counters()
    report = AgentReport(ended.revision, elements=tuple(finals)).to_dict()
    assert (await h.call("POST", "/v1/agent/report", w.agent_a, json=report)).status_code == 204

    grants = (await h.ok("GET", f"/v1/sessions/{sid}/report", w.owner_a))["grants"]
    assert [(g["packets"], g["bytes"]) for g in grants] == [(38, 2280)]
