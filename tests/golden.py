"""Golden files under tests/testdata: compare, or rewrite with UPDATE_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TESTDATA = Path(__file__).parent / "testdata"


def load_json(relative: str) -> Any:
    return json.loads((TESTDATA / relative).read_text())


def assert_golden_json(relative: str, actual: Any) -> None:
    path = TESTDATA / relative
    rendered = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == json.loads(rendered), f"{relative} differs"


def assert_golden_text(relative: str, actual: str) -> None:
    path = TESTDATA / relative
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert path.read_text() == actual, f"{relative} differs"
