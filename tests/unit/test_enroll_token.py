"""Enrollment tokens: format, parse errors, hashing, constant-time verify, one-time use."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.broker_link.enroll import EnrollmentError, enroll
from broker import enroll_token
from broker.enroll_token import EnrollTokenError
from netpolicy.enroll_format import parse_enroll_token

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FP = hashlib.sha256(b"a CA certificate").hexdigest()


def test_mint_format_hash_and_expiry() -> None:
    minted = enroll_token.mint(FP.upper(), NOW, timedelta(minutes=30))
    assert re.fullmatch(rf"ztbenroll\.{FP}\.[A-Za-z0-9_-]{{43}}", minted.token)
    assert minted.token_hash == hashlib.sha256(minted.token.encode()).hexdigest()
    assert minted.expires_at == NOW + timedelta(minutes=30)
    assert enroll_token.mint(FP, NOW).expires_at == NOW + enroll_token.DEFAULT_TTL
    secrets = {parse_enroll_token(enroll_token.mint(FP, NOW).token).secret for _ in range(50)}
    assert len(secrets) == 50
    assert minted.token not in repr(minted)
    assert parse_enroll_token(minted.token).secret not in repr(parse_enroll_token(minted.token))


def test_mint_refuses_bad_input() -> None:
    with pytest.raises(EnrollTokenError, match="64 hex"):
        enroll_token.mint("abc", NOW)
    with pytest.raises(EnrollTokenError, match="lifetime"):
        enroll_token.mint(FP, NOW, timedelta(days=8))
    with pytest.raises(EnrollTokenError, match="lifetime"):
        enroll_token.mint(FP, NOW, timedelta(0))


def test_parse_round_trip_and_whitespace() -> None:
    token = enroll_token.mint(FP, NOW).token
    parsed = parse_enroll_token(f"  {token}\n")
    assert parsed.ca_fingerprint == FP
    assert str(parsed) == token


SECRET = "A" * 43


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "must look like"),
        (f"kubeadm.{FP}.{SECRET}", "must look like"),
        (f"ztbenroll.{FP}", "must look like"),
        (f"ztbenroll.{FP}.{SECRET}.extra", "must look like"),
        (f"ztbenroll.{FP[:-1]}.{SECRET}", "64 lower-case hex"),
        (f"ztbenroll.{FP.upper()}.{SECRET}", "64 lower-case hex"),
        (f"ztbenroll.{FP}.{SECRET[:-1]}", "truncated"),
        (f"ztbenroll.{FP}.{SECRET[:-1]}=", "truncated"),
    ],
)
def test_parse_errors_are_clear(token: str, message: str) -> None:
    with pytest.raises(EnrollTokenError, match=message):
        parse_enroll_token(token)


def test_agent_refuses_a_malformed_token_before_any_network(tmp_path: Path) -> None:
    bad = f"ztbenroll.{FP}.{SECRET[:-1]}"
    with pytest.raises(EnrollmentError, match="truncated"):
        enroll("https://192.0.2.1:1", bad, tmp_path / "state", "ztb0", 51820, "203.0.113.1:51820")
    assert not (tmp_path / "state" / "config.json").exists()


def test_verify_against_stored_hash() -> None:
    minted = enroll_token.mint(FP, NOW)
    assert enroll_token.verify(minted.token, minted.token_hash)
    assert enroll_token.verify(minted.token, minted.token_hash.upper())
    other = enroll_token.mint(FP, NOW)
    assert not enroll_token.verify(other.token, minted.token_hash)
    assert not enroll_token.verify("garbage", minted.token_hash)
    # Same secret pinned to another CA is another token.
    swapped = minted.token.replace(FP, hashlib.sha256(b"other CA").hexdigest())
    assert not enroll_token.verify(swapped, minted.token_hash)


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    minted = enroll_token.mint(FP, NOW)
    assert enroll_token.verify(minted.token, minted.token_hash)
    assert not enroll_token.verify(enroll_token.mint(FP, NOW).token, minted.token_hash)
    assert len(calls) == 2


def test_tokens_are_one_time_and_expire() -> None:
    expires = NOW + timedelta(hours=1)
    enroll_token.check_redeemable(expires, None, NOW)
    with pytest.raises(EnrollTokenError, match="already used"):
        enroll_token.check_redeemable(expires, NOW, NOW)
    with pytest.raises(EnrollTokenError, match="expired"):
        enroll_token.check_redeemable(expires, None, expires)
