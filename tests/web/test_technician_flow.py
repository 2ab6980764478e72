"""A technician asks for access, then gets the config file and its QR code (key shown once)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from tests.web.conftest import World, make_home, shoot, sign_in


def test_technician_requests_downloads_config_and_sees_qr(
    context: BrowserContext, world: World, screenshot_dir: Path
) -> None:
    owner = world.person("hana@home-c.example", "homeowner")
    tech = world.person("ines@fixit.example", "technician")
    home = make_home(
        world, "oak-lane", owner, "192.168.7.0/24", {"camera": "192.168.7.30", "hub": "192.168.7.5"}
    )

    page = context.new_page()
    sign_in(page, world, tech)
    expect(page).to_have_url(re.compile(r"/web/tech$"))
    page.goto(f"/web/tech/new?home={home.id}")
    page.get_by_label("camera (192.168.7.30)").check()
    page.get_by_label(re.compile("^Ports")).fill("554")
    page.get_by_label("For how long").select_option(label="1 hour")
    page.get_by_label(re.compile("^Why")).fill("Camera stream drops every night")
    shoot(page, screenshot_dir, "technician-request-form")
    page.get_by_role("button", name="Send request").click()
    expect(page.get_by_role("heading", level=3)).to_contain_text("Waiting for approval")
    session_id = page.url.rsplit("/", 1)[1]

    world.call(owner.token, "POST", f"/v1/sessions/{session_id}/approve", json={})
    page.goto("/web/tech")
    mine = page.get_by_role("region", name=re.compile("oak-lane"))
    expect(mine).to_contain_text("camera (192.168.7.30): camera stream (RTSP), port 554")
    shoot(page, screenshot_dir, "technician-requests")
    mine.get_by_role("link", name=re.compile("Get the WireGuard configuration")).click()
    expect(page.get_by_role("note")).to_contain_text("Your private key is shown only once")
    page.get_by_role("button", name=re.compile("Show my configuration")).click()

    expect(page.get_by_role("alert")).to_contain_text("only time the private key is shown")
    qr = page.get_by_role("img", name="QR code of the WireGuard configuration")
    expect(qr.locator("svg")).to_be_visible()
    with page.expect_download() as wait:
        page.get_by_role("link", name=re.compile(r"Download ztb-ses_\w+\.conf")).click()
    conf = Path(wait.value.path()).read_text()
    private = re.search(r"^PrivateKey = (\S+)$", conf, re.MULTILINE)
    assert private is not None and len(private.group(1)) == 44, conf
    assert "AllowedIPs = 192.168.7.30/32" in conf
    assert "Endpoint = 203.0.113.10:51820" in conf
    shoot(page, screenshot_dir, "technician-config")

    # A second look shows no key: the broker forgot it after the first reveal.
    page.goto(f"/web/sessions/{session_id}/config")
    page.get_by_role("button", name=re.compile("Show my configuration")).click()
    expect(page.get_by_role("alert")).to_contain_text("already revealed")
    expect(page.locator("pre.conf")).to_contain_text("PrivateKey = <your private key>")
