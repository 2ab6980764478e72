"""WireGuard message headers, as far as a relay that never holds a key can read them.

From the WireGuard paper (section 5.4): every message starts with a type byte and three
zero bytes. Handshake messages end in ``mac1 || mac2``; ``mac1`` is a keyed BLAKE2s-128 over
the message before it, keyed with ``BLAKE2s-256("mac1----" || receiver's static public
key)``. The receiver's public key is not secret in general, but on a relay path it is
known only to the session's two ends and the broker, so a valid ``mac1`` is the relay's
proof that a handshake belongs to that path. Everything else is ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass

INITIATION = 1
RESPONSE = 2
COOKIE_REPLY = 3
TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_MIN_SIZE = 32  # header 16 + Poly1305 tag 16 (a keepalive)
MAC_SIZE = 16
LABEL_MAC1 = b"mac1----"

_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Message:
    """The readable part of one datagram: its type and the index fields it names."""

    kind: int
    sender: int | None  # the sender's index (initiation, response)
    receiver: int | None  # the index of the message it answers (response, cookie, data)


def mac1_key(public_key: str) -> bytes:
    """The key every handshake message sent *to* ``public_key`` is MACed with."""
    return hashlib.blake2s(LABEL_MAC1 + base64.b64decode(public_key)).digest()


def mac1_valid(data: bytes, key: bytes) -> bool:
    """``data`` is a handshake message whose ``mac1`` was made with ``key``."""
    end = len(data) - 2 * MAC_SIZE
    expected = hashlib.blake2s(data[:end], key=key, digest_size=MAC_SIZE).digest()
    return hmac.compare_digest(expected, data[end : end + MAC_SIZE])


def with_mac1(body: bytes, key: bytes) -> bytes:
    """``body`` (a message without its two MACs) plus a valid ``mac1`` and a zero ``mac2``.

    What a WireGuard peer sends when it is not under load; tests use it to craft
    handshakes that pass or fail the relay's check.
    """
    mac = hashlib.blake2s(body, key=key, digest_size=MAC_SIZE).digest()
    return body + mac + bytes(MAC_SIZE)


def parse(data: bytes) -> Message | None:
    """The message header, or None when ``data`` cannot be a WireGuard message."""
    size = len(data)
    if size < TRANSPORT_MIN_SIZE or data[1:4] != b"\0\0\0":
        return None
    kind = data[0]
    if kind == TRANSPORT:  # padded to 16 bytes but capped at the MTU: any size will do
        return Message(kind, None, _U32.unpack_from(data, 4)[0])
    if kind == INITIATION and size == INITIATION_SIZE:
        return Message(kind, _U32.unpack_from(data, 4)[0], None)
    if kind == RESPONSE and size == RESPONSE_SIZE:
        return Message(kind, _U32.unpack_from(data, 4)[0], _U32.unpack_from(data, 8)[0])
    if kind == COOKIE_REPLY and size == COOKIE_REPLY_SIZE:
        return Message(kind, None, _U32.unpack_from(data, 4)[0])
    return None
