"""The netlink element reader's packing and parsing, against messages laid out as the kernel
sends them (the real kernel is in tests/lab/test_agent_backends.py)."""

from __future__ import annotations

import struct

from agent.nftables import netlink as nl
from netpolicy.nft import ElementKey, KernelElement

RANGE = ElementKey(4, "100.64.0.2", "192.168.1.10", "udp", 8000, 8100)
SINGLE6 = ElementKey(6, "fd00::2", "fd01::10", "tcp", 22, 22)


def answer(start: bytes, end: bytes | None, packets: int, octets: int) -> bytes:
    """A NEWSETELEM body (after nlmsghdr): the element with its counter and expiry."""
    counter = nl._attr(nl._COUNTER_BYTES, struct.pack("!Q", octets))
    counter += nl._attr(nl._COUNTER_PACKETS, struct.pack("!Q", packets))
    expr = nl._attr(nl._EXPR_NAME, b"counter\0") + nl._nest(nl._EXPR_DATA, counter)
    elem = [nl._nest(nl._ELEM_KEY, nl._attr(nl._DATA_VALUE, start))]
    if end is not None:
        elem.append(nl._nest(nl._ELEM_KEY_END, nl._attr(nl._DATA_VALUE, end)))
    elem += [
        nl._attr(nl._ELEM_EXPIRATION, struct.pack("!Q", 299_500)),
        nl._nest(nl._ELEM_EXPR, expr),
    ]
    body = nl._NFGEN.pack(nl._NFPROTO_INET, 0, 0) + nl._attr(nl._LIST_TABLE, b"ztb\0")
    return body + nl._nest(nl._LIST_ELEMENTS, nl._nest(nl._LIST_ELEM, *elem))


def test_keys_are_packed_as_the_kernel_stores_concatenations() -> None:
    query = nl._Query.of(RANGE)
    assert query.start == bytes([100, 64, 0, 2, 192, 168, 1, 10, 17, 0, 0, 0, 0x1F, 0x40, 0, 0])
    assert query.end is not None and query.end[-4:] == bytes([0x1F, 0xA4, 0, 0])
    six = nl._Query.of(SINGLE6)
    assert len(six.start) == 40 and six.end is None
    request = nl._request(query, 7)
    length, kind, flags, sequence, _ = nl._HEADER.unpack_from(request)
    assert (length, kind, flags, sequence) == (len(request), nl._GETSETELEM, 0x5, 7)
    assert b"ranges4\0" in request


def test_answers_are_parsed_and_must_be_the_element_asked_for() -> None:
    query = nl._Query.of(RANGE)
    (parsed,) = nl._answers(answer(query.start, query.end, 38, 2280))
    assert query.matches(parsed)
    assert parsed.element == KernelElement(299, 38, 2280)
    # An enclosing element with another end is not the one asked for.
    (other,) = nl._answers(answer(query.start, query.start[:-4] + b"\x27\x10\0\0", 1, 60))
    assert not query.matches(other)
