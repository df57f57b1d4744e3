"""Request body limits and decoding: bytes on the wire → one JSON object, or a 400 that says why (Segment's
documented limits)."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import orjson
from aiohttp import web

from engine.collector.errors import RequestRejected, bad_request

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
# gzip of incompressible data is slightly larger than the data; allow for its framing on the wire.
_GZIP_SLACK_BYTES = 1024


def _too_large(what: str, limit: int) -> Exception:
    return bad_request(
        "too_large",
        f"{what} is larger than {limit // 1024} KB; Segment's limits are 32 KB per event and 500 KB per "
        "batch (split the batch, or send large data elsewhere)",
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing anything whose decoded size can exceed `limit` before reading it all."""
    wire_limit = limit + _GZIP_SLACK_BYTES
    what = "batch body" if limit >= MAX_BATCH_BYTES else "event body"
    if request.content_length is not None and request.content_length > wire_limit:
        raise _too_large(what, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > wire_limit:
            raise _too_large(what, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body_within(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """`read_body`, bounded in time as a whole: a client that has not sent its whole body within `timeout_s`
    (one dripping a byte a second, or one that stalls) gets `408 body_timeout` with `Connection: close`, so it
    holds a connection at most `timeout_s` and never the collector's capacity for processing requests. A client
    that closes the connection before its body is in is counted as `400 incomplete_body` (it cannot read it)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read_body(request, limit)
    except TimeoutError:
        raise RequestRejected(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} s; send it in one go and retry",
            close_connection=True,
        ) from None
    except ConnectionError:  # the client went away half-way (aiohttp's "Connection lost"): its fault, not ours
        raise RequestRejected(
            400, "incomplete_body", "the connection closed before the whole body arrived", close_connection=True
        ) from None


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding` (identity or gzip), never producing more than `limit` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    what = "batch body" if limit >= MAX_BATCH_BYTES else "event body"
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise _too_large(what, limit)
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise bad_request(
            "bad_encoding", f"Content-Encoding {encoding!r} is not supported; send gzip or none"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request("bad_gzip", f"body is declared gzip but does not decompress ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(what + " (decompressed)", limit)
    if not inflater.eof:
        raise bad_request("bad_gzip", "gzip body is truncated (the stream ends before its trailer)")
    return out


def parse_object(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise bad_request("bad_json", f"body is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad_request("bad_json", f"body must be a JSON object, got {type(doc).__name__}")
    return doc


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> dict[str, Any]:
    """Decompress and parse a request body into a JSON object within `limit` decoded bytes.

    Limits: a batch body (`/v1/batch`) `MAX_BATCH_BYTES` (500 KB) of JSON after decompression, a single event (a
    `/v1/track`-style body, or each element of a batch) `MAX_EVENT_BYTES` (32 KB) → `400 too_large`.
    `Content-Encoding: gzip` bodies are inflated with the same cap (no "zip bomb"). A truncated or corrupt gzip
    stream is `400 bad_gzip`, another encoding `400 bad_encoding`, anything but a UTF-8 JSON object `400 bad_json`
    (all `RequestRejected`). The body itself is read by `read_body_within`: incrementally, stopping as soon as the
    limit is passed, so an oversized upload costs at most `limit` bytes of memory, never the declared length.
    """
    return parse_object(decompress(raw, content_encoding, limit))
