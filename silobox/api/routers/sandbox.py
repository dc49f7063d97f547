"""silobox's own sandbox views: each container's writable disk (windowsfilter's sandbox.vhdx).

Not part of the Docker API; ``silo sandbox …`` uses them. Expand is ExpandSandboxSize; attach
and detach are diskpart's ``attach vdisk``/``detach vdisk`` for a stopped container.
"""

from __future__ import annotations

from aiohttp import web

from silobox.api.backend import SandboxBackend
from silobox.api.routers import (Route, check_fields, complete, json_response,
                                 read_json_object)
from silobox.errors import InvalidArgument

_ATTACH_BODY = {"MountPoint": "str", "Merged": "bool", "ReadWrite": "bool", "Exec": "bool"}


class SandboxRouter:
    def __init__(self, backend: SandboxBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/silobox/sandboxes", self.list_sandboxes),
            ("GET", "/silobox/sandboxes/{id}", self.inspect),
            ("POST", "/silobox/sandboxes/{id}/expand", self.expand),
            ("POST", "/silobox/sandboxes/{id}/attach", self.attach),
            ("POST", "/silobox/sandboxes/{id}/detach", self.detach),
        ]

    async def list_sandboxes(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.sandbox_list())

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.sandbox_inspect(request.match_info["id"]))

    async def expand(self, request: web.Request) -> web.Response:
        """``?size=30G`` or a body ``{"Size": "30G"}`` (bytes as an integer also work)."""
        body = await read_json_object(request, required=False)
        check_fields(body, {"Size": "any"})
        size = request.query.get("size") or body.get("Size")
        if size in (None, ""):
            raise InvalidArgument("expand needs a size, e.g. ?size=30G")
        if not isinstance(size, (str, int)) or isinstance(size, bool):
            raise InvalidArgument("Size must be a string like 30G or a number of bytes")
        return json_response(await complete(
            self.backend.sandbox_expand(request.match_info["id"], size)))

    async def attach(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=False)
        check_fields(body, _ATTACH_BODY)
        return json_response(await complete(self.backend.sandbox_attach(
            request.match_info["id"], body.get("MountPoint") or "", bool(body.get("Merged")),
            bool(body.get("ReadWrite")), bool(body.get("Exec")))))

    async def detach(self, request: web.Request) -> web.Response:
        return json_response(await complete(self.backend.sandbox_detach(
            request.match_info["id"])))
