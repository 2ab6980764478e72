"""A person switches on their authenticator app from the account page; sign-in then asks for it."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from tests.web.conftest import World, shoot, sign_in


def test_authenticator_setup_and_sign_in_with_code(
    context: BrowserContext, world: World, screenshot_dir: Path
) -> None:
    owner = world.person(world.fresh("ida") + "@home-i.example", "homeowner")
    page = context.new_page()
    sign_in(page, world, owner)
    page.get_by_role("link", name="Account").click()
    expect(page.locator("dl.facts")).to_contain_text("✖ off")
    page.get_by_role("button", name="Set up an authenticator app").click()
    expect(
        page.get_by_role("img", name="QR code for your authenticator app").locator("svg")
    ).to_be_visible()
    shoot(page, screenshot_dir, "account-authenticator")
    owner.totp_secret = page.locator("code").inner_text()

    page.get_by_label("Code from your authenticator app").fill("000000")
    page.get_by_role("button", name="Switch on").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong or already used")
    assert page.locator("code").inner_text() == owner.totp_secret  # same secret, no rescan
    page.get_by_label("Code from your authenticator app").fill(world.totp(owner))
    page.get_by_role("button", name="Switch on").click()
    expect(page.locator("dl.facts")).to_contain_text("✔ on")

    page.get_by_role("button", name=re.compile("Sign out")).click()
    page.get_by_label("Email").fill(owner.email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong email, password or code")
    sign_in(page, world, owner)
    expect(page).to_have_url(re.compile(r"/web/requests$"))
