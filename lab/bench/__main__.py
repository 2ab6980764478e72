"""``python -m lab.bench --quick|--full``: run every measurement, write JSON, print tables.

Needs root (namespaces, nftables). A measurement that breaks is reported as ``failed``
with its error and the run goes on; the exit status is non-zero if any failed. Goals that
are not met are results, not errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import machine, rig
from .modes import FULL, QUICK
from .registry import MEASUREMENTS
from .results import Measurement, markdown, write_json


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    size.add_argument("--full", action="store_true", help="the sizes the goals are set at")
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--only", action="append", choices=sorted(MEASUREMENTS), help="run only these"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if os.geteuid() != 0:
        print("lab.bench: error: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    mode = FULL if args.full else QUICK
    prefix = rig.unique_prefix()
    started = time.monotonic()
    header: dict[str, object] = {
        "mode": mode.name,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "prefix": prefix,
    }
    results: list[Measurement] = []
    for key in args.only or list(MEASUREMENTS):
        print(f"[bench] {key} ...", file=sys.stderr, flush=True)
        begun = time.monotonic()
        try:
            result = MEASUREMENTS[key](mode, prefix)
        except Exception as exc:  # report and go on: one broken row must not hide the rest
            result = Measurement(key, key, status="failed", why=f"{type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - begun
        results.append(result)
    header["wall_seconds"] = round(time.monotonic() - started, 1)
    write_json(args.output, header, results)
    print(markdown(results))
    print(f"\n{mode.name} run, {header['wall_seconds']} s; wrote {args.output}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
