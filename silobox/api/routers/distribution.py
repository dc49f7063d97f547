"""Registry routes (moby's ``router/distribution`` and the registry parts of ``router/image`` and
``router/system``): pull (``POST /images/create?fromImage=``), push, ``/auth`` (login) and
``/distribution/{name}/json``. Credentials come as ``X-Registry-Auth`` (base64url JSON)."""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from silobox.api.backend import DistributionBackend
from silobox.api.routers import Query, Route, json_response, read_json_object
from silobox.api.routers.progress import progress_stream
from silobox.errors import InvalidArgument


async def pull(backend: DistributionBackend, request: web.Request) -> web.StreamResponse:
    """``POST /images/create?fromImage=NAME&tag=TAG``, streamed as Docker's progress JSON."""
    query = Query(request)
    image = query.text("fromImage") or ""
    if not image:
        raise InvalidArgument("fromImage or fromSrc is required")
    auth = request.headers.get("X-Registry-Auth")

    async def run(progress: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        return await backend.image_pull(image, tag=query.text("tag") or "", auth_header=auth,
                                        platform=query.text("platform") or "",
                                        progress=progress)

    return await progress_stream(request, run)


class DistributionRouter:
    def __init__(self, backend: DistributionBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("POST", "/images/{name:.+}/push", self.push),
            ("POST", "/auth", self.auth),
            ("GET", "/distribution/{name:.+}/json", self.inspect),
        ]

    async def push(self, request: web.Request) -> web.StreamResponse:
        query = Query(request)
        name = request.match_info["name"]
        auth = request.headers.get("X-Registry-Auth")

        async def run(progress: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
            return await self.backend.image_push(name, tag=query.text("tag") or "",
                                                 auth_header=auth, progress=progress)

        return await progress_stream(request, run)

    async def auth(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=True)
        return json_response(await self.backend.registry_login(body))

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.distribution_inspect(
            request.match_info["name"], request.headers.get("X-Registry-Auth")))
