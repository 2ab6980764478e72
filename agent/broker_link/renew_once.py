"""``python -m agent.broker_link.renew_once --state-dir DIR``: renew the client certificate if due.

Run by the agent daemon as a short-lived child, so ``cryptography`` (and its ~12 MB of
RSS) loads only here. Prints one JSON object (``renewed``, ``next_attempt``,
``failures``, ``level``, ``error``) and exits 0 whenever it got that far.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime

from agent.broker_link.enroll import renew_if_due, renewal_log_level
from agent.state_dir import StateDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.broker_link.renew_once")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--failures", type=int, default=0, help="failed attempts so far")
    args = parser.parse_args(argv)
    # renew_if_due logs its own failure line; the parent logs one for both of us.
    logging.disable(logging.CRITICAL)
    now = datetime.now(UTC)
    validity = StateDir(args.state_dir).read_validity()
    result = renew_if_due(args.state_dir, now, args.failures)
    level = logging.INFO
    if result.error is not None:
        level = max(logging.WARNING, renewal_log_level(validity, now))
    print(
        json.dumps(
            {
                "renewed": result.renewed,
                "next_attempt": result.next_attempt.isoformat(),
                "failures": result.failures,
                "level": logging.getLevelName(level),
                "error": result.error,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
