"""What analytics.js (Segment's browser SDK, `@segment/analytics-next`) asks of its API host besides tracking: the
settings document it loads from its CDN, and the telemetry it posts every 30 s. Serving both from the collector
lets the standard snippet run with `cdnURL` pointing at it, so a page talks to nobody else."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from engine.config import ConfigError

# analytics-next reads `integrations["Segment.io"]` (where to send events), `metrics` (its own telemetry:
# `sampleRate` 0 turns it off), `plan`, `middlewareSettings`, `enabledMiddleware`, `remotePlugins` and
# `legacyVideoPluginsEnabled`; one integration only means "no device-mode destinations to load from a CDN".
EMPTY_PLAN = {"track": {"__default": {"enabled": True, "integrations": {}}}, "identify": {}, "group": {}}


def public_base(configured: str, request_host: str | None, request_scheme: str) -> tuple[str, str]:
    """(protocol, host and path prefix without scheme) of the collector as browsers reach it: the configured
    `NUDGE_COLLECTOR_PUBLIC_URL` (`https://t.shop.example`), else the request's own Host and scheme (fine on
    loopback; behind a proxy or a CDN configure it, as the Host header is the client's to choose)."""
    if configured:
        parts = urlsplit(configured)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"NUDGE_COLLECTOR_PUBLIC_URL={configured!r} must be an http(s) URL such as https://t.shop.example"
            )
        return parts.scheme, parts.netloc + parts.path.rstrip("/")
    return request_scheme, request_host or "localhost"


def settings_document(write_key: str, protocol: str, host: str, telemetry_sample_rate: float) -> dict[str, Any]:
    """The CDN settings analytics.js loads from `{cdnURL}/v1/projects/{writeKey}/settings`: events go to this
    collector (`apiHost` = `{host}/v1`), and so does its telemetry, at `telemetry_sample_rate` (0: none sent)."""
    api_host = f"{host}/v1"
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": False,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": EMPTY_PLAN,
        "metrics": {"sampleRate": telemetry_sample_rate, "host": api_host, "flushTimer": 30000},
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "edgeFunction": {},
        "analyticsNextEnabled": True,
    }
