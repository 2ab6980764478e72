"""The people's client: technician, homeowner and admin commands and their HTTP client.

Everything here runs on a bare ``pip install ztb`` (typer and httpx) and never imports
the broker, the agent or the lab. Modules are imported lazily by ``ztb.cli``.
"""
