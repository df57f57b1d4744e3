"""The one error type a collector step raises for a request it refuses, and how it becomes an HTTP response."""

from __future__ import annotations

from typing import Any


class RequestRejected(Exception):
    """A refused request, raised by any collector step (auth, decoding, normalising, producing); nothing has been
    written to Kafka when it is raised.

    `status` is the HTTP status; `code` a short stable word (also the Segment SDKs' `code` field, which they log);
    `message` says what is wrong and how to fix it; `errors` optionally lists per-event problems by batch index;
    `retry_after_s` only for temporary refusals (429, 503); `close_connection` when the connection must not be
    reused (the request body was not read to its end). The body is JSON
    `{"success": false, "code", "message", "errors"?}` so the unmodified SDKs can parse and log it.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after_s: int | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.retry_after_s = retry_after_s
        self.close_connection = close_connection

    def body(self) -> dict[str, Any]:
        """The JSON response body."""
        out: dict[str, Any] = {"success": False, "code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = self.errors
        return out

    def headers(self) -> dict[str, str]:
        """`Retry-After` when the refusal is temporary."""
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def bad_request(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> RequestRejected:
    return RequestRejected(400, code, message, errors=errors)


def unavailable(code: str, message: str, retry_after_s: int = 2) -> RequestRejected:
    """A temporary failure: SDKs retry 5xx, and honour Retry-After."""
    return RequestRejected(503, code, message, retry_after_s=retry_after_s)
