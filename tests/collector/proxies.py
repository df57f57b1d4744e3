"""A real HTTP peer between an SDK and the collector that loses the collector's first answers: it forwards
each request, and for the first `fail_first` ones replies 500 although the collector accepted them."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from .conftest import ServerThread


class FlakyProxy(ServerThread):
    def __init__(self, target: str, fail_first: int) -> None:
        self.app_state: dict[str, Any] = {"forwarded": 0, "statuses": []}
        self._target = target
        self._fail_first = fail_first
        super().__init__(self._build)

    def _build(self) -> web.Application:
        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
            }
            async with (
                aiohttp.ClientSession() as session,
                session.post(self._target + request.path, data=body, headers=headers) as upstream,
            ):
                status, payload = upstream.status, await upstream.read()
            self.app_state["forwarded"] += 1
            self.app_state["statuses"].append(status)
            if self.app_state["forwarded"] <= self._fail_first:
                return web.json_response({"code": "lost", "message": "response lost on the way"}, status=500)
            return web.Response(status=status, body=payload, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/{endpoint}", forward)
        return app
