"""Where desired-state documents come from: a source the run loop polls.

``DesiredStateFile`` watches one JSON file (stat signature, then a content hash) and is
what ``ztb agent run --desired-state FILE`` uses; ``broker_link.source.BrokerSource`` long-polls
the broker behind the same protocol.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from netpolicy import DesiredState, PolicyError

_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    """A document and when it arrived on the agent's monotonic clock.

    ``expires_in`` counts from the arrival, not from when the loop got round to it.
    """

    document: DesiredState
    received_at: float


class DesiredStateSource(Protocol):
    def poll(self, timeout: float) -> Delivery | None:
        """A new document, or None when none arrived within ``timeout`` seconds.

        Raises PolicyError once for each bad document (then returns None until another
        document arrives); the caller keeps enforcing the last good one.
        """


class DesiredStateFile:
    def __init__(
        self,
        path: Path,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._sleep = sleep
        self._clock = clock
        self._signature: tuple[int, int, int] | None = None
        self._digest: str | None = None

    def poll(self, timeout: float) -> Delivery | None:
        document = self._check()
        if document is None:
            self._sleep(timeout)
            document = self._check()
        return None if document is None else Delivery(document, self._clock())

    def _check(self) -> DesiredState | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._signature == (0, 0, 0):
                return None
            self._signature, self._digest = (0, 0, 0), None
            raise PolicyError(f"desired state file {self.path} does not exist") from None
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return None
        self._signature = signature
        if stat.st_size > _MAX_BYTES:
            raise PolicyError(f"desired state file {self.path} is over {_MAX_BYTES} bytes")
        data = self.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            return DesiredState.from_json(data)
        except PolicyError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise PolicyError(f"desired state is malformed: {exc!r}") from None
