"""Where a run happened: enough to judge whether two result files are comparable."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def describe() -> dict[str, object]:
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "nft": _output(["nft", "--version"]),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "git_revision": _output(["git", "rev-parse", "--short", "HEAD"]),
        # other work on the machine shows up in every p99: keep it next to the numbers
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
