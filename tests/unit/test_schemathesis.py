"""Schemathesis over the broker's own OpenAPI document: no input makes the API answer 5xx.

Issue 10 ran 50,841 schemathesis cases against a live broker and found 500s (a non-ASCII
TOTP code). This is the bounded version for every CI run: each operation gets a fixed,
derandomized set of generated requests, valid and invalid (about 1,800 requests, 30-40 s
on the shared 2-core machine), each sent as the admin, a homeowner and a technician of
the two-home world. Webhook deliveries the generated
calls trigger go to an in-memory transport, never to the addresses hypothesis invents.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from broker.app import create_app
from broker.config import Settings

from .broker_harness import Template, TlsTerminator

EXAMPLES_PER_OPERATION = 20
BASE_URL = "http://broker"


def _no_network(_: httpx.Request) -> httpx.Response:
    return httpx.Response(204)


@pytest.fixture
def api(sqlite_template: Template, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    data_dir = tmp_path / "broker"
    shutil.copytree(sqlite_template.data_dir, data_dir)
    app = create_app(
        Settings(data_dir=data_dir, webhook_attempts=1),
        webhook_transport=httpx.MockTransport(_no_network),
    )
    world = sqlite_template.world
    tokens = {"admin": world.admin, "homeowner": world.owner_a, "technician": world.tech_a}
    # No lifespan (no `with`): the periodic job stays off, as in every unit test.
    client = TestClient(TlsTerminator(app), base_url=BASE_URL, raise_server_exceptions=False)
    try:
        yield client, tokens
    finally:
        client.close()
        app.state.broker.webhooks.close()
        app.state.broker.engine.dispose()


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis speaks ``requests``; the test client is httpx (raw bodies are
    ``content``, and these cases carry no cookies)."""
    kwargs.pop("cookies", None)
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    return kwargs


@pytest.mark.timeout(240)  # bounded by the example count; this is only the backstop
def test_no_input_makes_a_server_error(api: tuple[TestClient, dict[str, str]]) -> None:
    """Every operation, with valid and invalid input, as each role; every 5xx is collected
    and reported together. (Schemathesis' pytest plugin does not run under pytest 9, so the
    cases come from each operation's hypothesis strategy and go through our own client.)"""
    client, tokens = api
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    server_errors: list[str] = []
    started, requests = time.monotonic(), 0

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself must be valid
        operation = result.ok()
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
            GenerationMode.NEGATIVE
        )

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: schemathesis.Case[Any]) -> None:
            nonlocal requests
            for role, token in tokens.items():
                auth = {"Authorization": f"Bearer {token}"}
                requests += 1
                response = client.request(**_httpx_kwargs(case.as_transport_kwargs(BASE_URL, auth)))
                if response.status_code >= 500:
                    server_errors.append(
                        f"{case.method} {case.formatted_path} as {role} -> "
                        f"{response.status_code}: {case.as_curl_command()}"
                    )

        no_server_error()
    print(f"schemathesis: {requests} requests in {time.monotonic() - started:.1f}s")
    assert not server_errors, "\n".join(server_errors[:20])
