"""The sign-in cookie by default: Secure, HttpOnly, SameSite, ``__Host-`` prefix (no browser)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from broker.app import create_app
from broker.config import Settings
from broker.users_service import create_user
from broker.web import install_web


def test_default_cookies_are_secure_and_http_only(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    if not any(getattr(route, "name", None) == "web" for route in app.routes):
        install_web(app)
    with app.state.broker.unit_of_work() as uow:
        create_user(uow, "test", "pat@example.com", "homeowner", "a long enough password")
    try:
        client = TestClient(app, base_url="https://testserver")

        form = client.get("/web/login")
        assert re.search(
            r"__Host-ztb-pre=\S+; HttpOnly; .*Path=/; SameSite=strict; Secure",
            form.headers["set-cookie"],
        )
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        token = re.search(r'name="csrf_token" value="(\w+)"', form.text)
        assert token is not None

        signed_in = client.post(
            "/web/login",
            data={
                "email": "pat@example.com",
                "password": "a long enough password",
                "csrf_token": token.group(1),
            },
            follow_redirects=False,
        )
        assert signed_in.status_code == 303
        cookie = next(
            c for c in signed_in.headers.get_list("set-cookie") if c.startswith("__Host-ztb=")
        )
        for flag in ("HttpOnly", "Path=/", "SameSite=lax", "Secure"):
            assert flag in cookie, cookie
        assert signed_in.headers["cache-control"] == "no-store"
    finally:
        app.state.broker.engine.dispose()
