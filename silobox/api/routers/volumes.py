"""Volume routes: Docker's ``/volumes`` (list, create, inspect, remove, prune)."""

from __future__ import annotations

from aiohttp import web

from silobox.api.backend import VolumeBackend
from silobox.api.routers import (Query, Route, check_fields, complete, json_response,
                                 no_content, read_json_object, version_at_least)

CREATE_BODY = {"Name": "str", "Driver": "str", "DriverOpts": {"*": "str"},
                "Labels": {"*": "str"}}


class VolumeRouter:
    def __init__(self, backend: VolumeBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/volumes", self.list_volumes),
            ("POST", "/volumes/create", self.create),
            ("POST", "/volumes/prune", self.prune),
            ("GET", "/volumes/{name}", self.inspect),
            ("DELETE", "/volumes/{name}", self.remove),
        ]

    async def list_volumes(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.volume_list(Query(request).filters()))

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=False)
        check_fields(body, CREATE_BODY)
        return json_response(await complete(self.backend.volume_create(body)), status=201)

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.volume_inspect(request.match_info["name"]))

    async def remove(self, request: web.Request) -> web.Response:
        force = Query(request).flag("force")
        await complete(self.backend.volume_remove(request.match_info["name"], force=force))
        return no_content()

    async def prune(self, request: web.Request) -> web.Response:
        """Since API 1.42 only anonymous volumes go unless the ``all`` filter says otherwise."""
        all_volumes = not version_at_least(request, (1, 42))
        return json_response(await complete(
            self.backend.volume_prune(Query(request).filters(), all_volumes=all_volumes)))
