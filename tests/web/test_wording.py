"""Plain words for grants: what the homeowner reads before approving (no browser needed)."""

from __future__ import annotations

import pytest

from broker.web.wording import byte_words, duration_words, grant_words, spec_words, state_words


@pytest.mark.parametrize(
    ("grant", "words"),
    [
        (
            {"device": "Thermostat", "device_ip": "192.168.1.20", "proto": "tcp", "ports": "443"},
            "Thermostat (192.168.1.20): web page, port 443",
        ),
        (
            {"device": "cam", "device_ip": "10.0.0.5", "proto": "tcp", "ports": "554"},
            "cam (10.0.0.5): camera stream (RTSP), port 554",
        ),
        (
            {"device": "hub", "device_ip": "10.0.0.6", "proto": "tcp", "ports": "1883"},
            "hub (10.0.0.6): MQTT (smart-home messages), port 1883",
        ),
        (
            {"device": "nas", "device_ip": "10.0.0.7", "proto": "tcp", "ports": "22"},
            "nas (10.0.0.7): SSH (remote command line), port 22",
        ),
        (
            {"device": "x", "device_ip": "10.0.0.8", "proto": "tcp", "ports": "8000-8010"},
            "x (10.0.0.8): ports 8000 to 8010",
        ),
        (
            {"device": "y", "device_ip": "10.0.0.9", "proto": "udp", "ports": "5353"},
            "y (10.0.0.9): device discovery (mDNS), UDP port 5353",
        ),
        (
            {"device": "z", "device_ip": "10.0.0.10", "proto": "tcp", "ports": "4711"},
            "z (10.0.0.10): port 4711",
        ),
    ],
)
def test_grant_words(grant: dict[str, str], words: str) -> None:
    assert grant_words(grant) == words


def test_spec_words_for_pending_escalations() -> None:
    assert spec_words("camera:tcp/554") == "camera: camera stream (RTSP), port 554"


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1800, "30 minutes"),
        (3600, "1 hour"),
        (5400, "1 hour 30 minutes"),
        (61, "1 minute 1 second"),
        (0, "0 seconds"),
        (-5, "0 seconds"),
    ],
)
def test_duration_words(seconds: int, words: str) -> None:
    assert duration_words(seconds) == words


def test_state_and_byte_words() -> None:
    assert state_words("ended", "revoked") == "Ended: ended early"
    assert state_words("requested") == "Waiting for approval"
    assert byte_words(512) == "512 bytes"
    assert byte_words(1536) == "1.5 KB"
    assert byte_words(3 * 1024**3) == "3.0 GB"
