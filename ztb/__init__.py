"""The ``ztb`` command: a thin dispatcher over the agent, broker and lab command groups."""
