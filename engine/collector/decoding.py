"""Request body limits and decoding: bytes on the wire → one JSON object, or a 400 that says why (Segment's
documented limits)."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiohttp import web

from engine.collector.errors import bad_request

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


async def decode_request(request: web.Request, limit: int) -> dict[str, Any]:
    """Read, decompress and parse the request body into a JSON object within `limit` decoded bytes.

    Limits: a batch body (`/v1/batch`) `MAX_BATCH_BYTES` (500 KB) of JSON after decompression, a single event (a
    `/v1/track`-style body, or each element of a batch) `MAX_EVENT_BYTES` (32 KB) → `400 too_large`. The body is
    read incrementally and reading stops as soon as the limit is passed, so an oversized upload costs at most
    `limit` bytes of memory, never the declared length; `Content-Encoding: gzip` bodies are inflated with the same
    cap (no "zip bomb"). A truncated or corrupt gzip stream is `400 bad_gzip`, another encoding `400
    bad_encoding`, anything but a UTF-8 JSON object `400 bad_json` (all `RequestRejected`).
    """
    raw = await read_body(request, limit)
    return parse_object(decompress(raw, request.headers.get("Content-Encoding"), limit))
