"""A homeowner approves a request (shorter, with TOTP), watches it, ends it, reads the report."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from tests.web.conftest import World, agent_reports, make_home, shoot, sign_in


def test_homeowner_approves_watches_ends_and_reads_report(
    context: BrowserContext, world: World, screenshot_dir: Path
) -> None:
    owner = world.person("olivia@home-a.example", "homeowner", totp=True)
    tech = world.person("tom@acme-heating.example", "technician")
    home = make_home(
        world,
        "maple-street",
        owner,
        "192.168.1.0/24",
        {"thermostat": "192.168.1.20", "camera": "192.168.1.30"},
    )
    world.call(
        owner.token, "PATCH", f"/v1/homes/{home.id}", json={"require_totp_for_approval": True}
    )
    asked = world.call(
        tech.token,
        "POST",
        "/v1/sessions",
        json={
            "home": home.name,
            "grants": ["thermostat:tcp/443"],
            "duration_s": 1800,
            "reason": "Boiler error E42",
        },
    )

    page = context.new_page()
    sign_in(page, world, owner)
    expect(page).to_have_url(re.compile(r"/web/requests$"))
    card = page.get_by_role("region", name=re.compile("tom@acme-heating.example"))
    expect(card).to_contain_text("thermostat (192.168.1.20): web page, port 443 — for 30 minutes")
    expect(card).to_contain_text("Company: acme-heating.example")
    expect(card).to_contain_text("Boiler error E42")
    shoot(page, screenshot_dir, "homeowner-requests")

    card.get_by_label("Allow for").select_option(label="15 minutes")
    card.get_by_label("Code from your authenticator app").fill(world.totp(owner))
    card.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("Nothing is waiting for you")).to_be_visible()

    agent_reports(world, home, world.call(tech.token, "GET", f"/v1/sessions/{asked['id']}"), 1536)
    page.goto("/web/active")
    live = page.get_by_role("region", name=re.compile("tom@acme-heating.example"))
    expect(live).to_contain_text("Active")
    timer = live.get_by_role("timer")
    expect(timer).to_have_text(re.compile(r"^1[45]:\d\d left$"))
    first = timer.inner_text()
    expect(timer).not_to_have_text(first, timeout=3000)  # it counts down in the browser
    expect(live).to_contain_text("thermostat (192.168.1.20): 1.5 KB")
    expect(live.locator("time").first).to_contain_text(re.compile(r"CET|CEST|GMT\+[12]"))
    expect(page.locator("footer")).to_contain_text("Times are shown in Europe/Berlin")
    shoot(page, screenshot_dir, "homeowner-active")

    # The technician asks for more while connected: it waits here for a second approval.
    more = {"grants": ["camera:tcp/554"]}
    world.call(tech.token, "POST", f"/v1/sessions/{asked['id']}/grants", json=more)
    page.reload()
    extra = live.get_by_role("status")
    expect(extra).to_contain_text("The technician asks for more")
    expect(extra).to_contain_text("camera (192.168.1.30): camera stream (RTSP), port 554")
    shoot(page, screenshot_dir, "homeowner-escalation")
    extra.get_by_label("Code from your authenticator app").fill(world.totp(owner))
    extra.get_by_role("button", name="Allow this too").click()
    expect(live.get_by_role("status")).to_have_count(0)
    expect(live.get_by_role("list")).to_contain_text("camera (192.168.1.30)")

    live.get_by_role("button", name="End now").click()
    expect(page).to_have_url(re.compile(rf"/web/sessions/{asked['id']}$"))
    expect(page.get_by_role("heading", level=3)).to_contain_text("Ended: ended early")
    expect(page.locator("dl.facts dt:text-is('Approved by') + dd")).to_contain_text("you, ")
    expect(page.locator("dl.facts dt:text-is('Approved for') + dd")).to_have_text("15 minutes")
    timeline = page.get_by_role("list").filter(has_text="session.requested")
    for action in ("session.requested", "session.approved", "session.active", "session.ended"):
        expect(timeline).to_contain_text(action)
    expect(timeline).to_contain_text("session.requested by tom@acme-heating.example")
    expect(timeline).to_contain_text("session.active by the home's router")
    expect(page.get_by_role("table")).to_contain_text("1.5 KB")
    shoot(page, screenshot_dir, "homeowner-report")

    page.goto("/web/history")
    expect(page.get_by_role("status")).to_contain_text(
        re.compile(r"Audit chain verified up to event \d+")
    )
    expect(page.get_by_role("table")).to_contain_text("ended early")
    shoot(page, screenshot_dir, "homeowner-history")

    page.goto(f"/web/homes/{home.id}")
    expect(page.get_by_role("table")).to_contain_text("192.168.1.30")
    page.get_by_label("Name (letters, digits, . _ -)").fill("doorbell")
    page.get_by_label("Address in your home network").fill("192.168.1.40")
    page.get_by_role("button", name="Add device").click()
    expect(page.get_by_role("table")).to_contain_text("doorbell")
    page.get_by_role("button", name="Remove camera").click()
    expect(page.get_by_role("table")).not_to_contain_text("camera")
    page.get_by_label(re.compile("Longest access")).fill("45")
    page.get_by_label(re.compile("Requests approved without asking you")).fill("[{oops")
    page.get_by_role("button", name="Save rules").click()
    expect(page.get_by_role("heading", name="Please check what you entered")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("auto-approve rules are not valid JSON")
    assert (
        world.call(owner.token, "GET", f"/v1/homes/{home.id}")["policy"].get("max_duration_s")
        != 2700
    )
    shoot(page, screenshot_dir, "error-page")
