"""Swarm routes: ``/swarm``, ``/nodes``, ``/services``, ``/tasks``, ``/secrets``, ``/configs``.

silod is never part of a swarm, so it answers every swarm endpoint as a dockerd that is not in
one does: 503 with dockerd's words (clients such as docker-py, compose and the CLI read the 503
as "swarm inactive"; a 404 reads as an API mismatch). The checks dockerd makes on a request
before it asks its cluster component (version parameters, log streams) come first, with the
same words, so a client sees the same answer either way.
"""

from __future__ import annotations

from aiohttp import web

from silobox.api.routers import Query, Route
from silobox.errors import InvalidArgument, Unavailable

NOT_A_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or '
                 '"docker swarm join" to connect this node to swarm and try again.')
"""dockerd's answer to every cluster read or write while the node is in no swarm."""

NOT_IN_A_SWARM = "This node is not part of a swarm"
"""dockerd's answer to ``swarm leave`` while the node is in no swarm."""

NO_SWARM_MODE = (f"{NOT_IN_A_SWARM}: silobox does not implement swarm mode, so it can neither "
                 "create nor join a swarm")

_OBJECTS = ("nodes", "services", "tasks", "secrets", "configs")


class SwarmRouter:
    """Every swarm route of the Engine API, answered as by a node outside any swarm."""

    def routes(self) -> list[Route]:
        routes: list[Route] = [
            ("GET", "/swarm", self.not_a_manager),
            ("POST", "/swarm/init", self.no_swarm_mode),
            ("POST", "/swarm/join", self.no_swarm_mode),
            ("POST", "/swarm/leave", self.leave),
            ("POST", "/swarm/update", self.update("swarm")),
            ("GET", "/swarm/unlockkey", self.not_a_manager),
            ("POST", "/swarm/unlock", self.not_a_manager),
        ]
        for kind in _OBJECTS:
            routes += [("GET", f"/{kind}", self.not_a_manager),
                       ("GET", f"/{kind}/{{id}}", self.not_a_manager)]
        for kind in ("services", "secrets", "configs"):
            routes.append(("POST", f"/{kind}/create", self.not_a_manager))
        for kind in ("nodes", "services", "secrets", "configs"):
            routes += [("DELETE", f"/{kind}/{{id}}", self.not_a_manager),
                       ("POST", f"/{kind}/{{id}}/update", self.update(kind[:-1]))]
        routes += [("GET", "/services/{id}/logs", self.logs),
                   ("GET", "/tasks/{id}/logs", self.logs)]
        return routes

    async def not_a_manager(self, request: web.Request) -> web.Response:
        raise Unavailable(NOT_A_MANAGER)

    async def no_swarm_mode(self, request: web.Request) -> web.Response:
        raise Unavailable(NO_SWARM_MODE)

    async def leave(self, request: web.Request) -> web.Response:
        raise Unavailable(NOT_IN_A_SWARM)

    async def logs(self, request: web.Request) -> web.Response:
        query = Query(request)
        if not (query.flag("stdout") or query.flag("stderr")):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        raise Unavailable(NOT_A_MANAGER)

    @staticmethod
    def update(kind: str):  # type: ignore[no-untyped-def]
        """``POST .../update?version=N``: dockerd parses the version before anything else."""
        async def handler(request: web.Request) -> web.Response:
            raw = request.query.get("version", "")
            if not (raw.isascii() and raw.isdigit()):
                if kind in ("secret", "config"):
                    raise InvalidArgument(f"invalid {kind} version")
                raise InvalidArgument(f"invalid {kind} version '{raw}': "
                                      f'strconv.ParseUint: parsing "{raw}": invalid syntax')
            raise Unavailable(NOT_A_MANAGER)
        return handler
