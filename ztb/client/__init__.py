"""The people's client: technician, homeowner and admin commands and their HTTP client.

Everything here runs on a bare ``pip install ztb`` (typer and httpx) and never imports
the broker, the agent or the lab. Modules are imported lazily by ``ztb.cli``.
"""

import sys

# httpx imports its own command-line client (click, rich, pygments) whenever those are
# installed, as they are next to typer: about half of the CLI's start-up on a busy
# machine, for nothing ztb uses. A None entry makes that optional import fail, and httpx
# falls back to a stub ``httpx.main``. Here, so it runs before any client module imports
# httpx.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
