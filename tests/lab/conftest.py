"""One lab for the whole lab-test session: building it costs seconds, a desired state does not.

Missing root or tools are handled before any fixture runs, by the ``lab`` marker policy in
``tests/conftest.py`` (skip locally, fail under CI=true).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.harness import Lab


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    with Lab(technicians=2) as running:
        yield running


@pytest.fixture
def live_lab(lab: Lab) -> Lab:
    """The lab with a running agent, whatever the previous test did to it."""
    if not lab.agent_running():
        lab.start_agent()
    return lab
