"""The run loop with the file source: bad documents never replace the last good one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.desired_file import DesiredStateFile
from agent.nftables.backend import NftError
from agent.runner import Runner
from netpolicy import PolicyError
from tests.unit.test_agent_reconcile import Rig, make_session, make_state


def write(path: Path, text: str) -> None:
    """Replace the file the way a careful writer does (new inode, so a new signature)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def test_file_source_reports_each_document_once(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    source = DesiredStateFile(path, sleep=lambda _: None)
    with pytest.raises(PolicyError, match="does not exist"):
        source.poll(0)
    assert source.poll(0) is None  # the same missing file is not reported again
    write(path, make_state(1, make_session(1)).to_json())
    delivery = source.poll(0)
    assert delivery is not None and delivery.document.revision == 1
    assert source.poll(0) is None
    write(path, make_state(1, make_session(1)).to_json())  # rewritten, same bytes
    assert source.poll(0) is None
    write(path, "{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        source.poll(0)
    assert source.poll(0) is None
    write(path, json.dumps({"revision": 2, "network": {}, "sessions": [{"grants": 1}]}))
    with pytest.raises(PolicyError):
        source.poll(0)


def _runner(rig: Rig, path: Path, status: Path) -> Runner:
    source = DesiredStateFile(path, sleep=lambda _: None, clock=rig.clock)
    return Runner(rig.reconciler, source, threading.Event(), status, clock=rig.clock)


def test_bad_document_keeps_the_last_good_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig()
    path, status_path = tmp_path / "desired.json", tmp_path / "status.json"
    runner = _runner(rig, path, status_path)
    write(path, make_state(1, make_session(1), make_session(2)).to_json())
    runner.step()
    good = rig.text()
    transactions = len(rig.nft.transactions)
    # A policy error (tunnel address outside the pool) in an otherwise fine document.
    bad = make_state(2, make_session(1)).to_dict()
    bad["sessions"][0]["tunnel_ip"] = "10.9.9.9"
    write(path, json.dumps(bad))
    runner.step()
    assert rig.text() == good
    assert len(rig.nft.transactions) == transactions
    lines = capsys.readouterr().err.strip().splitlines()
    assert "event=bad_desired_state" in lines[-1]
    assert "enforcing_revision=1" in lines[-1]
    status = json.loads(status_path.read_text())
    assert status["revision"] == 1
    assert set(status["sessions"]) == {"s1", "s2"}
    assert all(s["peer"] for s in status["sessions"].values())


def test_failed_apply_is_retried_after_a_back_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig()
    path = tmp_path / "desired.json"
    runner = _runner(rig, path, tmp_path / "status.json")
    write(path, make_state(1, make_session(1)).to_json())
    original = rig.nft.run

    def broken(commands: list[dict[str, object]]) -> None:
        raise NftError("nft: Error: Could not process rule: Operation not permitted")

    rig.nft.run = broken  # type: ignore[method-assign]
    runner.step()
    assert "event=apply_failed" in capsys.readouterr().err
    rig.nft.run = original  # type: ignore[method-assign]
    runner.step()
    assert rig.wg.peers == {}  # not yet: still backing off
    rig.clock.advance(1.5)
    runner.step()
    assert len(rig.wg.peers) == 1


def test_expiry_is_handled_by_the_loop(tmp_path: Path) -> None:
    rig = Rig()
    path, status_path = tmp_path / "desired.json", tmp_path / "status.json"
    runner = _runner(rig, path, status_path)
    write(path, make_state(1, make_session(1, expires_in=5)).to_json())
    runner.step()
    rig.clock.advance(4.5)
    runner.step()
    assert rig.wg.peers == {}
    status = json.loads(status_path.read_text())
    assert status["sessions"] == {"s1": {"remaining": 0.5, "peer": False}}
    assert status["elements"] == []
