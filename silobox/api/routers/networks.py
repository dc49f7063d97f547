"""Network routes (moby's ``router/network``) and silobox's HNS views (``/silobox/hns/…``)."""

from __future__ import annotations

from aiohttp import web

from silobox.api.backend import NetworkBackend
from silobox.api.routers import (Query, Route, check_fields, complete, json_response,
                                 no_content, read_json_object)
from silobox.api.routers.containers import ENDPOINT_SETTINGS

CREATE_BODY = {"Name": "str", "Driver": "str", "Internal": "bool", "Attachable": "bool",
           "Ingress": "bool", "EnableIPv6": "bool", "CheckDuplicate": "bool",
           "IPAM": {"Driver": "str", "Config": [{"Subnet": "str", "IPRange": "str",
                                                 "Gateway": "str",
                                                 "AuxiliaryAddresses": {"*": "str"}}],
                    "Options": {"*": "str"}},
           "ConfigOnly": "bool", "ConfigFrom": {"Network": "str"}, "Scope": "str",
           "Options": {"*": "str"}, "Labels": {"*": "str"}}
_POLICIES = {"RequestType": "str", "Policies": ["object"]}
CONNECT_BODY = {"Container": "str", "EndpointConfig": ENDPOINT_SETTINGS, "Force": "bool"}


class NetworkRouter:
    def __init__(self, backend: NetworkBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/networks", self.list_networks),
            ("POST", "/networks/create", self.create),
            ("POST", "/networks/prune", self.prune),
            ("GET", "/networks/{id}", self.inspect),
            ("DELETE", "/networks/{id}", self.remove),
            ("POST", "/networks/{id}/connect", self.connect),
            ("POST", "/networks/{id}/disconnect", self.disconnect),
            ("GET", "/silobox/hns/networks", self.hns_networks),
            ("GET", "/silobox/hns/networks/{id}", self.hns_network),
            ("GET", "/silobox/hns/endpoints", self.hns_endpoints),
            ("GET", "/silobox/hns/endpoints/{id}", self.hns_endpoint),
            ("POST", "/silobox/hns/endpoints/{id}/policies", self.hns_endpoint_policies),
        ]

    async def list_networks(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.network_list(Query(request).filters()))

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.network_inspect(request.match_info["id"]))

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=True)
        check_fields(body, CREATE_BODY)
        return json_response(await complete(self.backend.network_create(body)), 201)

    async def remove(self, request: web.Request) -> web.Response:
        await complete(self.backend.network_remove(request.match_info["id"]))
        return no_content()

    async def prune(self, request: web.Request) -> web.Response:
        return json_response(await complete(self.backend.network_prune(Query(request).filters())))

    async def connect(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=True)
        check_fields(body, CONNECT_BODY)
        await complete(self.backend.network_connect(request.match_info["id"],
                                                    body.get("Container") or "",
                                                    body.get("EndpointConfig") or {}))
        return web.Response(status=200)

    async def disconnect(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=True)
        check_fields(body, CONNECT_BODY)
        await complete(self.backend.network_disconnect(request.match_info["id"],
                                                       body.get("Container") or "",
                                                       bool(body.get("Force"))))
        return web.Response(status=200)

    async def hns_networks(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.hns_networks())

    async def hns_network(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.hns_network(request.match_info["id"]))

    async def hns_endpoints(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.hns_endpoints())

    async def hns_endpoint(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.hns_endpoint(request.match_info["id"]))

    async def hns_endpoint_policies(self, request: web.Request) -> web.Response:
        """HCN ModifyEndpoint, ResourceType Policy: {"RequestType": "Add"|"Remove"|"Refresh",
        "Policies": [{"Type": "ACL"|"Route", "Settings": {...}}]} → the endpoint record."""
        body = await read_json_object(request, required=True)
        check_fields(body, _POLICIES)
        return json_response(await complete(self.backend.hns_endpoint_policies(
            request.match_info["id"], body.get("RequestType") or "Add",
            body.get("Policies") or [])))
