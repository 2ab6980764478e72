"""One module per ``ztb`` command group of the people's client (user, home, device, session,
audit), each exposing a typer ``app`` that ``ztb.cli`` imports only when it runs."""
