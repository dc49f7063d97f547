"""silobox's own views of the compute service, the counterpart of HCS's enumerate/properties.

Not part of the Docker API; ``silo hcs …`` reads them.
"""

from __future__ import annotations

from aiohttp import web

from silobox.api.backend import SystemBackend
from silobox.api.routers import Route, json_response, parse_csv


class ComputeRouter:
    def __init__(self, backend: SystemBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/silobox/compute-systems", self.list_systems),
            ("GET", "/silobox/compute-systems/{id}", self.properties),
        ]

    async def list_systems(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.compute_systems())

    async def properties(self, request: web.Request) -> web.Response:
        """``?types=Statistics,ProcessList`` selects the property types, as HCS's query does."""
        types = parse_csv(request.query.get("types"))
        return json_response(
            await self.backend.compute_system_properties(request.match_info["id"], types))
