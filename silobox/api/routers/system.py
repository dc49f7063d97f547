"""System routes: ``/_ping``, ``/version``, ``/info``."""

from __future__ import annotations

import json

from aiohttp import web

from silobox import API_VERSION, MIN_API_VERSION
from silobox.api.backend import SystemBackend
from silobox.api.routers import Query, Route, json_response

# Headers Docker's /_ping carries besides those every response gets (see app.py).
PING_HEADERS = {
    "Builder-Version": "1",
    "Swarm": "inactive",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}


class SystemRouter:
    def __init__(self, backend: SystemBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/_ping", self.ping),
            ("HEAD", "/_ping", self.ping_head),
            ("GET", "/version", self.version),
            ("GET", "/info", self.info),
            ("GET", "/events", self.events),
            ("GET", "/system/df", self.df),
        ]

    async def ping(self, request: web.Request) -> web.Response:
        """Clients negotiate the API version from this answer's API-Version header."""
        return web.Response(text="OK", content_type="text/plain", headers=PING_HEADERS)

    async def ping_head(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="text/plain", charset="utf-8",
                            headers=PING_HEADERS)

    async def version(self, request: web.Request) -> web.Response:
        doc = await self.backend.version()
        # The API's own range is this layer's fact; docker-py negotiates from ApiVersion.
        doc.setdefault("ApiVersion", API_VERSION)
        doc.setdefault("MinAPIVersion", MIN_API_VERSION)
        return json_response(doc)

    async def info(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.info())

    async def df(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.system_df())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """One JSON document per event, flushed as it happens; ends at ``until`` if given."""
        query = Query(request)
        since, until = query.timestamp("since"), query.timestamp("until")
        stream = await self.backend.events(since, until, query.filters())
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        await response.prepare(request)
        async for event in stream:
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response
