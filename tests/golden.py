"""Golden files under tests/testdata: compare, or rewrite with ``pytest --update-golden``.

Rewriting is asked for on the command line of one run, never by an environment variable:
a variable left exported in a shell would make every later run rewrite the files and
compare nothing (the autouse fixture in ``tests/conftest.py`` removes ``UPDATE_GOLDEN``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TESTDATA = Path(__file__).parent / "testdata"
UPDATE = False  # set from ``--update-golden`` by tests/conftest.py


def load_json(relative: str) -> Any:
    return json.loads((TESTDATA / relative).read_text())


def _rewrite(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run pytest --update-golden"


def assert_golden_json(relative: str, actual: Any) -> None:
    path = TESTDATA / relative
    rendered = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    _rewrite(path, rendered)
    assert json.loads(path.read_text()) == json.loads(rendered), f"{relative} differs"


def assert_golden_text(relative: str, actual: str) -> None:
    path = TESTDATA / relative
    _rewrite(path, actual)
    assert path.read_text() == actual, f"{relative} differs"
