"""Final counters: the last reading of elements that are about to leave the kernel.

Deleting an element deletes its counters, so the last traffic of a session would never be
reported. The reconciler therefore has them read just before they go, and this module
keeps them until the next report takes them (``take``), once each:

- Revoke, or any removal from the document: right before the transaction that deletes
  them, the leaving elements' counters are read (``capture``: one netlink round trip for
  those keys, ~0.2 ms whatever the set size). A failed or partial read is logged and
  skipped; it never stops the delete.
- Expiry: the kernel removes elements on its own at their timeout, which is the session's
  lifetime rounded down to whole seconds, so it falls in the session's last second. The
  expiry timer deletes the elements when under one second is left, normally just before
  the kernel does, and reads them like a revoke. As a fallback for a late loop, each
  session's counters are also read ``EXPIRY_READ_LEAD_S`` before its kernel timeout
  (``read_expiring``). Blind spot: if the kernel's timeout wins the race (the loop was
  late, or the agent was down), traffic after that earlier read, at most the last ~1.5 s,
  is never counted, and nothing at all is read while the agent is down.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from netpolicy import ElementCounters
from netpolicy.nft import ElementKey, KernelElement

from .events import log_event
from .nftables.backend import NftBackend
from .status import element_counters

# How long before an element's kernel timeout its counters are read, in case the kernel
# removes it before the expiry timer does.
EXPIRY_READ_LEAD_S = 1.5


class WrittenSession(Protocol):
    """A session as the reconciler last wrote it to the kernel."""

    @property
    def keys(self) -> frozenset[ElementKey]: ...
    @property
    def expires_at(self) -> float: ...  # its elements' kernel expiry, monotonic clock
    @property
    def live(self) -> bool: ...


class FinalCounters:
    """Readings of leaving elements, held until the next report takes them."""

    def __init__(self, nft: NftBackend) -> None:
        self._nft = nft
        self._finals: dict[ElementKey, tuple[str, KernelElement]] = {}  # not yet reported
        self._expiry_reads: dict[str, float] = {}  # session id -> kernel expiry it was read for
        self.next_read: float | None = None  # when ``read_expiring`` next has work

    def capture(self, owned: Mapping[ElementKey, str]) -> None:
        """Read ``owned`` elements' counters (key -> session id); a failure only costs the read."""
        if not owned:
            return
        started = time.perf_counter()
        try:
            read = self._nft.read_elements(list(owned))
        except Exception as exc:  # whatever the read hit, the delete goes on
            log_event("final_counters_failed", elements=len(owned), error=exc)
            return
        for key, element in read.items():
            self._finals[key] = (owned[key], element)
        log_event(
            "final_counters",
            elements=len(owned),
            read=len(read),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def take(self) -> list[ElementCounters]:
        """The readings not reported yet, once each.

        The one place a reading is marked ``final``: nothing later can be read of them.
        """
        finals, self._finals = self._finals, {}
        return [
            element_counters(sid, key, element, final=True)
            for key, (sid, element) in sorted(finals.items())
        ]

    def plan(self, written: Mapping[str, WrittenSession]) -> None:
        """When the next live session's counters are due, ``EXPIRY_READ_LEAD_S`` before
        its kernel timeout; a session already read for that timeout is not due again."""
        reads: dict[str, float] = {}
        due: list[float] = []
        for sid, entry in written.items():
            if not entry.live:
                continue
            if self._expiry_reads.get(sid) == entry.expires_at:
                reads[sid] = entry.expires_at
            else:
                due.append(entry.expires_at - EXPIRY_READ_LEAD_S)
        self._expiry_reads, self.next_read = reads, min(due, default=None)

    def read_expiring(
        self,
        written: Mapping[str, WrittenSession],
        elements: Mapping[ElementKey, float],
        now: float,
    ) -> int:
        """Read the sessions whose elements expire within ``EXPIRY_READ_LEAD_S``.

        ``elements``: each element's kernel expiry. Cost follows those sessions' elements;
        returns how many elements were asked for.
        """
        if self.next_read is None or now < self.next_read:
            return 0
        owned: dict[ElementKey, str] = {}
        for sid, entry in written.items():
            due = entry.expires_at - EXPIRY_READ_LEAD_S <= now
            if entry.live and due and self._expiry_reads.get(sid) != entry.expires_at:
                self._expiry_reads[sid] = entry.expires_at
                owned.update((k, sid) for k in entry.keys if elements.get(k, now) > now)
        self.capture(owned)
        self.plan(written)
        return len(owned)
