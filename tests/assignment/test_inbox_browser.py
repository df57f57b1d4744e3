"""A rep uses the inbox in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) on a
phone-sized window: signs in by link, sees the inbox, acknowledges a lead and sees it move to "Acknowledged",
opens the lead's timeline. Screenshots go to the test's tmp dir, and to $NUDGE_TEST_ARTIFACTS/inbox when set.

Skipped (with the reason) when the browser, its driver or the `selenium` package is missing."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.assignment.conftest import ManualClock, rep, roster, serve_reps

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=390,844")  # fmt: skip

try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

needs_browser = pytest.mark.skipif(
    not (HAVE_SELENIUM and Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/install-system.sh) and pip `selenium` (dev extra)",
)

ADA = {"traits": {"name": "Ada Lovelace", "company": "Engines Ltd"}, "score": 91, "stage": "sql",
       "explanation": "viewed pricing 3 times and requested a demo",
       "recent": [{"name": "Pricing Viewed"}, {"name": "Demo Requested"}], "last_page": "/pricing"}  # fmt: skip
GRACE = {"traits": {"name": "Grace Hopper", "company": "Navy"}, "score": 64, "stage": "mql",
         "explanation": "score crossed 60"}  # fmt: skip


def drive(signin_url: str, shots: Path) -> dict[str, Any]:
    """The rep's session, synchronously (Selenium blocks: it runs in a thread while the server keeps serving)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(browser, 15)
        browser.get(signin_url)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#waiting article.lead")))
        seen["url"] = browser.current_url
        seen["waiting"] = [
            a.get_attribute("data-lead") for a in browser.find_elements(By.CSS_SELECTOR, "#waiting .lead")
        ]
        seen["fits_phone"] = browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        )
        seen["countdown"] = browser.find_element(By.CSS_SELECTOR, "#waiting .sla").text
        browser.save_screenshot(str(shots / "1-inbox.png"))

        browser.find_element(By.CSS_SELECTOR, '#waiting .lead[data-lead="ada"] form[data-action="ack"] button').click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '#acknowledged .lead[data-lead="ada"]')))
        seen["flash"] = browser.find_element(By.CSS_SELECTOR, ".flash").text
        seen["waiting_after"] = [
            a.get_attribute("data-lead") for a in browser.find_elements(By.CSS_SELECTOR, "#waiting .lead")
        ]
        seen["acknowledged_after"] = [
            a.get_attribute("data-lead") for a in browser.find_elements(By.CSS_SELECTOR, "#acknowledged .lead")
        ]
        browser.save_screenshot(str(shots / "2-acknowledged.png"))

        browser.find_element(By.CSS_SELECTOR, '#acknowledged .lead[data-lead="ada"] a.name').click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".timeline li")))
        seen["timeline"] = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".timeline li")]
        browser.save_screenshot(str(shots / "3-lead.png"))
    finally:
        browser.quit()
    return seen


@needs_browser
async def test_a_rep_signs_in_and_acknowledges_a_lead_in_the_browser(redis_client, tmp_path: Path):
    clock = ManualClock(time.time())  # the page's countdown uses the browser's real clock
    team = roster(rep("alice"), rep("bob"), ack_within_s=900)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with serve_reps(redis_client, team, clock) as web:
        await web.assigner.assign("grace", GRACE)  # alice (round robin)
        await web.assigner.assign("someone", {"traits": {"name": "Bob's lead"}})  # bob
        clock.advance(30)
        await web.assigner.assign("ada", ADA)  # alice, newest
        seen = await asyncio.to_thread(drive, web.links.signin_url("alice", 600), shots)
        owner = await web.assigner.owner("ada")
        history = await web.assigner.store.history("ada")
    artifacts = os.environ.get("NUDGE_TEST_ARTIFACTS")
    if artifacts:
        shutil.copytree(shots, Path(artifacts) / "inbox", dirs_exist_ok=True)

    assert seen["url"].endswith("/inbox")  # the sign-in link's secret left the address bar
    assert seen["waiting"] == ["ada", "grace"]  # newest first; bob's lead is not there
    assert seen["fits_phone"] is True
    assert "left to acknowledge" in seen["countdown"]
    assert seen["waiting_after"] == ["grace"] and seen["acknowledged_after"] == ["ada"]
    assert "SLA clock stopped" in seen["flash"]
    assert any("acknowledged by Alice" in line for line in seen["timeline"])
    assert owner.acked_at_ms is not None and history[-1]["by"] == "inbox"
    assert sorted(p.name for p in shots.iterdir()) == ["1-inbox.png", "2-acknowledged.png", "3-lead.png"]
    assert all(p.stat().st_size > 5000 for p in shots.iterdir())
