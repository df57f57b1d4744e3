"""Shared HTTP plumbing for the HTTP connectors (webhook, Slack, CRM): one pooled session, one error mapping."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import orjson

from connectors.base import Connector, ConnectorConfig, ConnectorEnv, PermanentError, RetryableError

RETRYABLE_STATUSES = {408, 425, 429}
MessageT = TypeVar("MessageT")


class HttpClient:
    """One aiohttp session per connector (connection pooling, bounded by the connector's concurrency)."""

    def __init__(self, timeout_s: float, concurrency: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency)
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> str:
        """The response body (text) on 2xx; otherwise raises
        - `RetryableError("http_429", retry_after_s=...)` on 429, honouring `Retry-After` (seconds or HTTP date);
        - `RetryableError("http_<code>")` on 408, 425 and 5xx (the peer may recover);
        - `PermanentError("http_<code>")` on other 4xx (the request itself is wrong; retrying cannot help);
        - `RetryableError("timeout" | "connection_error")` when no response came.
        Error details carry the status and at most 200 characters of the body, never the URL (which may hold a token).
        """
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                text = await response.text(errors="replace")
                check_status(response.status, text, response.headers.get("Retry-After"))
                return text
        except TimeoutError:
            raise RetryableError("timeout", f"no response within {self.timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            # The exception text can include the URL (and so a token in it): keep only its class.
            raise RetryableError("connection_error", type(exc).__name__) from None

    async def post_json(self, url: str, doc: Any, headers: dict[str, str]) -> str:
        """`request("POST", ...)` with `doc` as JSON (bytes are sent as they are)."""
        body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        return await self.request("POST", url, body, {"Content-Type": "application/json", **headers})


class HttpConnector(Connector[MessageT]):
    """Base of the connectors that speak HTTP: one pooled `HttpClient` sized by the connector's concurrency and
    timeout, opened by `start()` and closed by `close()`. Subclasses implement `build`, and `transmit` with
    `self.http`."""

    def __init__(self, name: str, config: ConnectorConfig, env: ConnectorEnv) -> None:
        super().__init__(name, config, env)
        self.http = HttpClient(config.timeout_s, config.concurrency)

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()


def check_status(status: int, body: str, retry_after: str | None) -> None:
    if 200 <= status < 300:
        return
    detail = f"HTTP {status}: {body[:200]}"
    if status == 429:
        raise RetryableError("http_429", detail, retry_after_s=parse_retry_after(retry_after))
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(f"http_{status}", detail, retry_after_s=parse_retry_after(retry_after))
    raise PermanentError(f"http_{status}", detail)


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (`120` or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)
