"""Limits on what one HTTP connection may make the broker hold: head size, header count, time.

uvicorn's httptools protocol has no cap on the request head: httptools collects a header
value in memory until its end, so one connection streaming a 100 MB header grew the broker
by ~140 MB and slowed every other request. Nor does anything time out a client that sends
its request a byte at a time (slowloris): uvicorn's only timer is the keep-alive one,
armed after a response. ``LimitedHttpProtocol`` adds, per connection:

- the request line (URL) at most ``MAX_URL_BYTES`` (else 414), the head at most
  ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` header lines (else 431), each answered with a
  JSON reason and the connection closed. A head still incomplete after more than
  ``MAX_HEAD_BYTES`` arrived is refused at once, so at most one read buffer is held;
- ``REQUEST_READ_TIMEOUT_S`` from a connection's start, or a request's first byte, until
  the whole request (head and body) has arrived, else 408 and close. Responses that take
  long (the agent's long-poll) are not affected: the clock stops when the request is in.

Body size stays the app's business (``Settings.max_body_bytes``, answered 413).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_URL_BYTES = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
REQUEST_READ_TIMEOUT_S = 15.0


class _Refused(Exception):
    """Raised inside a parser callback; httptools stops parsing and uvicorn answers 400,
    which ``send_400_response`` below turns into the status recorded here."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits and a request read deadline."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._refusal: tuple[int, str] | None = None
        self._head_open = True
        self._head_seen = 0  # bytes received while the current head is incomplete
        self._head_bytes = 0  # exact bytes of the current head's URL and header lines
        self._header_count = 0
        self._read_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_open:
            self._head_seen += len(data)
        super().data_received(data)
        if self._head_open and self._head_seen > MAX_HEAD_BYTES and self._refusal is None:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_bytes, self._header_count = True, 0, 0
        if self._read_deadline is None:
            self._arm_read_deadline()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._stop(HTTPStatus.REQUEST_URI_TOO_LONG, "request URL too long")
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._stop(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header lines")
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open, self._head_seen = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_read_deadline()
        self._head_open = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._answer_and_close(*self._refusal)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._stop(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")

    def _stop(self, status: int, reason: str) -> None:
        self._refusal = (status, reason)
        raise _Refused(reason)

    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = (status, reason)
        self._answer_and_close(status, reason)

    def _answer_and_close(self, status: int, reason: str) -> None:
        self._cancel_read_deadline()
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": reason}).encode()
        phrase = HTTPStatus(status).phrase
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(REQUEST_READ_TIMEOUT_S, self._read_too_slow)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_too_slow(self) -> None:
        self._read_deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        if self._head_open and idle:
            self._answer_and_close(HTTPStatus.REQUEST_TIMEOUT, "request not received in time")
        elif not self.transport.is_closing():
            self.transport.close()  # a body still trickling in: the app sees a disconnect
