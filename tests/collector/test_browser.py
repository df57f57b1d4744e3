"""Segment's browser SDK (analytics.js, unmodified) in headless Chromium, on a shop page served from another
origin, sending to the collector: one-letter paths, text/plain bodies with `writeKey`, CORS.

Needs `chromium-headless-shell` (or `chromium`) on PATH and `npm ci --prefix tests/collector/browser`; skipped
otherwise, with that hint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from engine.config import Settings

from .conftest import WRITE_KEY, ServerThread

pytestmark = pytest.mark.integration

AJS_DIR = Path(__file__).parent / "browser" / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")

# The shop page: loads analytics.js with inline CDN settings (no network beyond loopback) pointing at the
# collector, tracks a cart, identifies the shopper, views a page.
PAGE = """<!doctype html><html><head><title>shop</title><script src="/ajs/index.js"></script></head><body>
<script>
(async () => {
  const segment = {apiKey: "%(key)s", apiHost: "%(api)s", protocol: "http"};
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
    {writeKey: "%(key)s", cdnSettings: {integrations: {"Segment.io": segment}}},
    {disableClientPersistence: true});
  await analytics.track("Product Added", {sku: "A-1", price: 25});
  await analytics.identify("browser-user", {email: "web@example.com"});
  await analytics.page("Shop", "Home");
  document.title = "sent";
})().catch(e => { document.title = "error: " + e; });
</script></body></html>"""


@pytest.mark.skipif(
    CHROMIUM is None or not AJS_DIR.exists(),
    reason="needs chromium-headless-shell (apt) and `npm ci --prefix tests/collector/browser`",
)
def test_analytics_js_in_a_browser_reaches_the_clickstream(
    collector_settings: Settings, collector: ServerThread, read_clickstream
) -> None:
    api = collector.url.removeprefix("http://") + "/v1"

    def shop() -> web.Application:
        app = web.Application()
        app.router.add_static("/ajs", AJS_DIR)
        html = PAGE % {"key": WRITE_KEY, "api": api}

        async def index(_: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        app.router.add_get("/", index)
        return app

    site = ServerThread(shop).start()  # another port: another origin, so the browser enforces CORS
    try:
        browser = subprocess.run(
            [
                CHROMIUM,
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=10000",
                "--dump-dom",
                site.url + "/",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        site.stop()
    assert "<title>sent</title>" in browser.stdout, browser.stdout[-2000:] + browser.stderr[-2000:]
    records = {r.value["type"]: r for r in read_clickstream(3)}
    assert set(records) == {"track", "identify", "page"}
    track = records["track"]
    anonymous_id = track.value["anonymousId"]
    assert track.key == anonymous_id and track.value["event"] == "Product Added"
    assert track.value["properties"] == {"sku": "A-1", "price": 25}
    assert track.value["context"]["library"]["name"] == "analytics.js"
    identify = records["identify"]
    assert identify.key == "browser-user" and identify.value["anonymousId"] == anonymous_id
    assert identify.value["traits"]["email"] == "web@example.com"
    assert records["page"].key == "browser-user" and records["page"].value["name"] == "Home"
