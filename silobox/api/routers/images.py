"""Image routes: list and inspect."""

from __future__ import annotations

from aiohttp import web

from silobox.api.backend import ImageBackend
from silobox.api.routers import Query, Route, json_response


class ImageRouter:
    def __init__(self, backend: ImageBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/images/json", self.list_images),
            # Image references contain slashes and colons (registry:5000/library/busybox:1.36).
            ("GET", "/images/{name:.+}/json", self.inspect),
        ]

    async def list_images(self, request: web.Request) -> web.Response:
        query = Query(request)
        images = await self.backend.image_list(all=query.flag("all"), filters=query.filters())
        return json_response(images)

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.image_inspect(request.match_info["name"]))
