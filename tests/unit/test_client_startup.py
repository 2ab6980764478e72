"""The client CLI's start-up: what a technician's ``ztb session config`` loads.

On a busy 2-core machine every module costs wall time inside approve -> connect (the
lab's latency test runs the technician's CLI), so httpx's own command-line client (click,
rich, pygments) must not come along with httpx.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_http_client_does_not_load_httpxs_own_cli() -> None:
    code = (
        "import sys, ztb.client.http, ztb.client.activation; "
        "print(sorted(m for m in ('httpx._main', 'rich', 'pygments') if sys.modules.get(m)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
