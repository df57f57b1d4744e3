"""Segment's browser SDK (analytics.js, unmodified) in headless Chromium, on a shop page served from another
origin, loading its settings from the collector (`cdnURL`) and sending to it: settings document, one-letter paths,
text/plain bodies with `writeKey`, CORS, a signed user hash, and its telemetry every 30 s (virtual clock run past
it) to `/v1/m`; nothing leaves loopback.

Needs Debian's `chromium` (scripts/install-system.sh installs it) and npm (the test runs
`npm ci --prefix tests/collector/browser` once when the package is missing); skipped otherwise, with that hint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from aiohttp import web

from engine.collector.app import create_app
from engine.collector.trust import UserHashes
from engine.config import Settings

from .conftest import USER_HASH_SECRET, WRITE_KEY, ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PACKAGE_DIR = Path(__file__).parent / "browser"
AJS_DIR = PACKAGE_DIR / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
NPM = shutil.which("npm")
VIRTUAL_TIME_MS = 45_000  # past analytics.js's 30 s telemetry flush

# The shop page: loads analytics.js with `cdnURL` at the collector (settings come from there), tracks a cart,
# identifies the shopper with the user hash the shop's back end computed, views a page, checks that the collector
# answers /v1/m cross-origin, then waits (virtual time) past the telemetry flush and lists every URL it fetched.
# `protocol: "http"`: the collector here is plain HTTP on loopback; analytics.js assumes https otherwise.
PAGE = """<!doctype html><html><head><title>shop</title><script src="/ajs/index.js"></script></head><body>
<pre id="fetched"></pre>
<script>
(async () => {
  const collector = "%(collector)s";
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
    {writeKey: "%(key)s", cdnURL: collector},
    {disableClientPersistence: true, integrations: {"Segment.io": {protocol: "http"}}});
  await analytics.track("Product Added", {sku: "A-1", price: 25});
  await analytics.identify("browser-user", {email: "web@example.com"}, {context: {userHash: "%(hash)s"}});
  await analytics.page("Shop", "Home");
  const m = await fetch(collector + "/v1/m", {method: "POST", headers: {"Content-Type": "text/plain"},
                                              body: JSON.stringify({series: []})});
  document.body.dataset.telemetry = String(m.status);
  document.title = "sent";
  setTimeout(() => {
    document.getElementById("fetched").textContent =
      JSON.stringify(performance.getEntriesByType("resource").map(e => e.name));
    document.title = "done";
  }, 35000);
})().catch(e => { document.title = "error: " + e; });
</script></body></html>"""


@pytest.fixture(scope="module")
def analytics_js() -> Path:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (scripts/install-system.sh)")
    if not AJS_DIR.exists():
        if NPM is None:
            pytest.skip("needs npm to install analytics.js: npm ci --prefix tests/collector/browser")
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund", "--prefix", str(PACKAGE_DIR)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0 or not AJS_DIR.exists():
            pytest.skip(f"npm ci --prefix tests/collector/browser failed: {done.stderr[-500:]}")
    return AJS_DIR


def telemetry_answers(url: str) -> float:
    """`/v1/m` requests answered 204 so far (the metrics registry is shared by the tests of this process)."""
    found = re.search(r'nudge_collector_requests_total\{endpoint="m",status="204"\} (\S+)', requests.get(url).text)
    return float(found.group(1)) if found else 0.0


def test_analytics_js_in_a_browser_loads_settings_sends_events_and_telemetry(
    analytics_js: Path, collector_settings: Settings, read_clickstream
) -> None:
    settings = collector_settings.with_(collector_telemetry_sample_rate=1.0)
    collector = ServerThread(lambda: create_app(settings)).start()

    def shop() -> web.Application:
        app = web.Application()
        app.router.add_static("/ajs", analytics_js)
        page = PAGE % {
            "key": WRITE_KEY,
            "collector": collector.url,
            "hash": UserHashes.sign(USER_HASH_SECRET, "browser-user"),
        }

        async def index(_: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        app.router.add_get("/", index)
        return app

    site = ServerThread(shop).start()  # another port: another origin, so the browser enforces CORS
    try:
        before = telemetry_answers(collector.url + "/metrics")
        browser = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                # nothing but loopback resolves: a request to Segment's servers would fail, and be listed below
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                f"--virtual-time-budget={VIRTUAL_TIME_MS}",
                "--dump-dom",
                site.url + "/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        telemetry = telemetry_answers(collector.url + "/metrics") - before
    finally:
        site.stop()
        collector.stop()
    dom = browser.stdout
    assert "<title>done</title>" in dom, dom[-2000:] + browser.stderr[-2000:]
    assert 'data-telemetry="204"' in dom  # the browser read the /v1/m answer: CORS allowed it
    fetched = json.loads(re.search(r'<pre id="fetched">(.*?)</pre>', dom, re.S).group(1).replace("&amp;", "&"))
    assert any("/v1/projects/" + WRITE_KEY + "/settings" in url for url in fetched), fetched
    assert all(url.startswith("http://127.0.0.1:") for url in fetched), fetched  # nothing to Segment's servers
    assert telemetry >= 2, "analytics.js's own telemetry flush (after 30 s) and the page's check"

    records = {r.value["type"]: r for r in read_clickstream(3)}
    assert set(records) == {"track", "identify", "page"}
    track = records["track"]
    anonymous_id = track.value["anonymousId"]
    assert track.key == anonymous_id and track.value["event"] == "Product Added"
    assert track.value["properties"] == {"sku": "A-1", "price": 25}
    assert track.value["context"]["library"]["name"] == "analytics.js"
    assert track.value["context"]["nudge"] == {"trusted": False, "auth": "client"}
    identify = records["identify"]
    assert identify.key == "browser-user" and identify.value["anonymousId"] == anonymous_id
    # signed by the shop's back end: trusted, so its email is kept; the hash itself is not stored
    assert identify.value["context"]["nudge"] == {"trusted": True, "auth": "user_hash"}
    assert identify.value["traits"]["email"] == "web@example.com"
    assert "userHash" not in identify.value["context"]
    assert records["page"].key == "browser-user" and records["page"].value["name"] == "Home"
