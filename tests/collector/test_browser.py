"""Segment's browser SDK (analytics.js, unmodified, loaded by the standard snippet) in headless Chromium, on a shop
page served from another origin, loading its settings from the collector (the snippet's `analytics._cdn`, i.e.
`cdnURL`) and sending to it: settings document, one-letter paths,
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

# The shop page: Segment's standard snippet (5.2.1), with the two changes a self-hosting shop makes: the script
# comes from the shop (`t.src`) and `analytics._cdn` is the collector, so settings come from there. It tracks a
# cart, identifies the shopper with the user hash the shop's back end computed, views a page, checks that the
# collector answers /v1/m cross-origin, then waits (virtual time) past the telemetry flush and lists every URL it
# fetched. `protocol: "http"`: the collector here is plain HTTP on loopback; analytics.js assumes https otherwise.
SNIPPET = (
    '!function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)if(analytics.invoked)'
    'window.console&&console.error&&console.error("Segment snippet included twice.");else{analytics.invoked=!0;'
    'analytics.methods=["trackSubmit","trackClick","trackLink","trackForm","pageview","identify","reset","group",'
    '"track","ready","alias","debug","page","screen","once","off","on","addSourceMiddleware",'
    '"addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware","register"];analytics.factory=function(e)'
    '{return function(){if(window[i].initialized)return window[i][e].apply(window[i],arguments);var n=Array.prototype'
    '.slice.call(arguments);if(["track","screen","alias","group","page","identify"].indexOf(e)>-1){var c=document.'
    'querySelector("link[rel=\'canonical\']");n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.'
    'pathname,u:location.href,s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);'
    'return analytics}};for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];analytics[key]='
    'analytics.factory(key)}analytics.load=function(key,n){var t=document.createElement("script");t.type="text/'
    'javascript";t.async=!0;t.setAttribute("data-global-segment-analytics-key",i);t.src="/ajs/standalone.js";var r='
    'document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);analytics._loadOptions=n};'
    'analytics._writeKey="%(key)s";analytics._cdn="%(collector)s";analytics.SNIPPET_VERSION="5.2.1";'
    'analytics.load("%(key)s", {integrations: {"Segment.io": {protocol: "http"}}});'
    "}}();"
)
PAGE = """<!doctype html><html><head><title>shop</title><script>""" + SNIPPET + """</script></head><body>
<pre id="fetched"></pre>
<script>
analytics.track("Product Added", {sku: "A-1", price: 25});
analytics.identify("browser-user", {email: "web@example.com"}, {context: {userHash: "%(hash)s"}});
analytics.page("Shop", "Home", {}, {}, async () => {
  const m = await fetch("%(collector)s/v1/m", {method: "POST", headers: {"Content-Type": "text/plain"},
                                              body: JSON.stringify({series: []})});
  document.body.dataset.telemetry = String(m.status);
  document.title = "sent";
  setTimeout(() => {
    document.getElementById("fetched").textContent =
      JSON.stringify(performance.getEntriesByType("resource").map(e => e.name));
    document.title = "done";
  }, 35000);
});
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
    track, identify = records["track"], records["identify"]
    anonymous_id = identify.value["anonymousId"]
    assert track.value["anonymousId"] == anonymous_id and track.value["event"] == "Product Added"
    # the snippet replays its buffered calls concurrently: the track reaches the collector before the identify
    # (its own lead) or after it (re-keyed to the identified user through the merge the identify recorded)
    assert track.key in (anonymous_id, "browser-user")
    assert track.value["properties"] == {"sku": "A-1", "price": 25}
    assert track.value["context"]["library"]["name"] == "analytics.js"
    assert track.value["context"]["nudge"] == {"trusted": False, "auth": "client"}
    assert identify.key == "browser-user" and anonymous_id
    # signed by the shop's back end: trusted, so its email is kept; the hash itself is not stored
    assert identify.value["context"]["nudge"] == {"trusted": True, "auth": "user_hash"}
    assert identify.value["traits"]["email"] == "web@example.com"
    assert "userHash" not in identify.value["context"]
    assert records["page"].key == "browser-user" and records["page"].value["name"] == "Home"
