"""WireGuard-shaped datagrams for relay tests: real headers and real ``mac1`` fields."""

from __future__ import annotations

import os
import struct

from broker.relay import wire
from ztb.wgkeys import key_pair


def keys() -> tuple[str, str]:
    """(technician public key, router public key)."""
    return key_pair()[1], key_pair()[1]


def initiation(sender: int, receiver_key: str) -> bytes:
    body = struct.pack("<BxxxI", wire.INITIATION, sender) + os.urandom(32 + 48 + 28)
    return wire.with_mac1(body, wire.mac1_key(receiver_key))


def response(sender: int, receiver: int, initiator_key: str) -> bytes:
    body = struct.pack("<BxxxII", wire.RESPONSE, sender, receiver) + os.urandom(32 + 16)
    return wire.with_mac1(body, wire.mac1_key(initiator_key))


def data(receiver: int, size: int = 128) -> bytes:
    return struct.pack("<BxxxIQ", wire.TRANSPORT, receiver, 0) + os.urandom(size - 16)
