"""Golden tests compare unless this run was asked to rewrite them."""

from __future__ import annotations

import os

from tests import golden


def test_an_exported_update_golden_reaches_no_test() -> None:
    """Run with UPDATE_GOLDEN=1 exported: golden files must still be compared."""
    assert "UPDATE_GOLDEN" not in os.environ
    assert golden.UPDATE is False
