"""The admin overview: homes with their agents, people, tokens; a new person's token once."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from tests.web.conftest import World, make_home, shoot, sign_in


def test_admin_sees_agents_people_and_tokens(
    context: BrowserContext, world: World, screenshot_dir: Path
) -> None:
    admin = world.person(world.fresh("root") + "@ops.example", "admin")
    owner = world.person(world.fresh("finn") + "@home-h.example", "homeowner")
    home = make_home(world, world.fresh("elm-"), owner, "192.168.9.0/24", {"nas": "192.168.9.7"})

    page = context.new_page()
    sign_in(page, world, admin)
    expect(page).to_have_url(re.compile(r"/web/admin$"))
    row = page.get_by_role("row").filter(has_text=home.name)
    expect(row).to_contain_text(owner.email)
    agent = world.call(world.admin_token, "GET", f"/v1/homes/{home.id}")["agents"][0]
    expires = row.locator(f"time[datetime='{agent['cert_not_after']}']")
    expect(expires).to_contain_text(re.compile(r"CET|CEST|GMT\+[12]"))  # local time, zone shown
    expect(row).to_contain_text("never")

    newcomer = world.fresh("gina") + "@fixit.example"
    page.get_by_label("Email").fill(newcomer)
    page.get_by_label("Role").select_option("technician")
    page.get_by_role("button", name="Add person").click()
    created = page.get_by_role("status")
    expect(created).to_contain_text("Their first API token, shown only now")
    expect(created.locator("pre")).to_have_text(re.compile(r"^ztb_\S{20,}$"))
    shoot(page, screenshot_dir, "admin")

    page.goto("/web/admin")
    expect(page.get_by_role("status")).to_have_count(0)
    tokens = (
        page.get_by_role("table", name="API tokens").get_by_role("row").filter(has_text=newcomer)
    )
    expect(tokens).to_have_count(1)
    tokens.get_by_role("button", name=re.compile(r"^Revoke token")).click()
    expect(tokens).to_contain_text("revoked")
