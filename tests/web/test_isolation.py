"""Another home's owner can neither see nor act on a session; forms without a CSRF token fail."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.web.conftest import Person, World, make_home, sign_in


@pytest.fixture
def two_homes(world: World) -> tuple[Person, Person, str, str]:
    """Owner A's home with a waiting request; owner B with a home of their own."""
    owner_a = world.person(world.fresh("ana") + "@home-d.example", "homeowner")
    owner_b = world.person(world.fresh("ben") + "@home-e.example", "homeowner")
    tech = world.person(world.fresh("carl") + "@repairs.example", "technician")
    home_a = make_home(
        world, world.fresh("birch-"), owner_a, "192.168.4.0/24", {"router-ui": "192.168.4.2"}
    )
    make_home(world, world.fresh("cedar-"), owner_b, "192.168.5.0/24", {"tv": "192.168.5.9"})
    asked = world.call(
        tech.token,
        "POST",
        "/v1/sessions",
        json={
            "home": home_a.name,
            "grants": ["router-ui:tcp/80"],
            "duration_s": 600,
            "reason": "WiFi setup",
        },
    )
    return owner_a, owner_b, home_a.id, asked["id"]


def _csrf(page: Page) -> str:
    return str(page.locator("input[name=csrf_token]").first.get_attribute("value"))


def _state(world: World, who: Person, session_id: str) -> str:
    return str(world.call(who.token, "GET", f"/v1/sessions/{session_id}")["state"])


def test_other_homeowner_cannot_see_or_act(
    context: BrowserContext, world: World, two_homes: tuple[Person, Person, str, str]
) -> None:
    owner_a, owner_b, home_a, session_id = two_homes
    page = context.new_page()
    sign_in(page, world, owner_b)
    expect(page.get_by_text("Nothing is waiting for you")).to_be_visible()

    for path in (f"/web/sessions/{session_id}", f"/web/homes/{home_a}"):
        response = page.goto(path)
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.locator("body")).not_to_contain_text("WiFi setup")

    token = _csrf(page)
    for path, form in (
        (f"/web/sessions/{session_id}/approve", {"duration_s": "600"}),
        (f"/web/sessions/{session_id}/deny", {}),
        (f"/web/sessions/{session_id}/revoke", {}),
        (f"/web/homes/{home_a}/devices", {"name": "spy", "ip": "192.168.4.66"}),
    ):
        answer = context.request.post(path, form={"csrf_token": token, **form}, max_redirects=0)
        assert answer.status == 404, (path, answer.status)
        assert "Not found" in answer.text()
    assert _state(world, owner_a, session_id) == "requested"
    devices = world.call(owner_a.token, "GET", f"/v1/homes/{home_a}/devices")["devices"]
    assert [d["name"] for d in devices] == ["router-ui"]


def test_posts_without_the_csrf_token_are_refused(
    context: BrowserContext, world: World, two_homes: tuple[Person, Person, str, str]
) -> None:
    owner_a, _, _, session_id = two_homes
    page = context.new_page()
    sign_in(page, world, owner_a)
    expect(page.get_by_text("WiFi setup")).to_be_visible()

    forms: list[dict[str, str | float | bool]] = [{}, {"csrf_token": "0" * 64}, {"csrf_token": ""}]
    for form in forms:
        answer = context.request.post(
            f"/web/sessions/{session_id}/approve", form=form, max_redirects=0
        )
        assert answer.status == 403
        assert "This form was not sent from this page" in answer.text()
    assert _state(world, owner_a, session_id) == "requested"

    # A fresh browser (no cookies at all) cannot post the sign-in form without its token either.
    anonymous = context.browser.new_context(base_url=world.base_url) if context.browser else None
    assert anonymous is not None
    try:
        answer = anonymous.request.post(
            "/web/login", form={"email": owner_a.email, "password": "x"}, max_redirects=0
        )
        assert answer.status == 403
    finally:
        anonymous.close()

    # With the page's own token the same form works.
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_text("Nothing is waiting for you")).to_be_visible()
    assert _state(world, owner_a, session_id) == "ended"
    expect(page).to_have_url(re.compile(r"/web/requests$"))


def test_sign_out_revokes_the_cookie(context: BrowserContext, world: World) -> None:
    owner = world.person(world.fresh("dora") + "@home-f.example", "homeowner")
    page = context.new_page()
    sign_in(page, world, owner)
    stolen = {c["name"]: c["value"] for c in context.cookies()}
    page.get_by_role("button", name=re.compile("Sign out")).click()
    expect(page).to_have_url(re.compile(r"/web/login$"))
    # A copy of the old cookie is worth nothing now.
    context.add_cookies([{"name": k, "value": v, "url": world.base_url} for k, v in stolen.items()])
    page.goto("/web/requests")
    expect(page).to_have_url(re.compile(r"/web/login\?next=/web/requests$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_wrong_password_is_a_message_on_the_page(context: BrowserContext, world: World) -> None:
    owner = world.person(world.fresh("eve") + "@home-g.example", "homeowner")
    page = context.new_page()
    page.goto("/web/requests")
    page.get_by_label("Email").fill(owner.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong email, password or code")
    expect(page.get_by_label("Email")).to_have_value(owner.email)
